"""Pruned RNN-T loss family in pure PyTorch, with k2's API and semantics.

This module mirrors ``k2.rnnt_loss`` for the *regular* (not "modified") transducer:
one frame can emit any number of symbols, and a blank moves to the next frame.

Notation used in all docstrings: ``B`` batch size, ``T`` (padded) number of frames,
``S`` (padded) number of symbols, ``C`` vocabulary size (including blank, which is
``termination_symbol``), ``R`` the pruning width ``s_range``.

``boundary`` is an optional int64 tensor (B, 4) of rows ``[s_begin, t_begin, s_end, t_end]``
(default ``[0, 0, S, T]``). Padded positions (``s > s_end`` or ``t >= t_end``) never
influence the loss or receive gradient. Non-zero ``s_begin``/``t_begin`` are supported
by :func:`mutual_information_recursion` and hence by every loss, as in k2.

The lattice recursion runs along anti-diagonals ``k = s + t`` (all cells of a diagonal
are independent), i.e. ``S + T`` vectorised steps, inside a custom autograd function
that computes the forward (alpha) and backward (beta) passes and returns the
occupation probabilities as gradients, so no per-step autograd graph is kept.

Backend: pure PyTorch by default. ``set_backend("k2")`` or the environment variable
``MVQ_KD_RNNT_BACKEND=k2`` delegates every public function to k2 when ``import k2``
works, and falls back to PyTorch (with a warning) when it does not.
"""

import functools
import inspect
import os
import warnings
from types import ModuleType
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "do_rnnt_pruning",
    "get_backend",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "mutual_information_recursion",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "set_backend",
]

_BACKENDS = ("torch", "k2")
_NEG_INF = float("-inf")
LossAndGrads = Union[Tensor, tuple[Tensor, tuple[Tensor, Tensor]]]


# --------------------------------------------------------------------------- backend


def set_backend(name: str) -> None:
    """Select ``"torch"`` (default) or ``"k2"`` for all functions of this module."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The requested backend name (``"k2"`` still falls back to torch without k2)."""
    return _backend


def _k2() -> Optional[ModuleType]:
    """The k2 module if the k2 backend is requested and importable, else None."""
    if _backend != "k2":
        return None
    try:
        import k2
    except ImportError:
        warnings.warn("k2 backend requested but k2 is not importable; using PyTorch", stacklevel=3)
        return None
    return k2


def _k2_or_torch(check: Optional[Callable[..., None]] = None) -> Callable:
    """Decorate a PyTorch implementation: after ``check(**arguments)`` (validation shared by
    both backends), run k2's function of the same name with the same (keyword) arguments
    when the k2 backend is selected and importable, else the implementation itself."""

    def wrap(impl: Callable) -> Callable:
        signature = inspect.signature(impl)

        @functools.wraps(impl)
        def dispatch(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if check is not None:
                check(**bound.arguments)
            k2 = _k2()
            if k2 is None:
                return impl(*args, **kwargs)
            k2_args = {
                k: v.contiguous() if isinstance(v, Tensor) else v
                for k, v in bound.arguments.items()
            }
            return getattr(k2, impl.__name__)(**k2_args)

        return dispatch

    return wrap


_backend = "torch"
set_backend(os.environ.get("MVQ_KD_RNNT_BACKEND", "torch"))


# ------------------------------------------------------------------ the recursion


def _boundary_rows(boundary: Optional[Tensor], B: int, S: int, T: int) -> list[list[int]]:
    """Validated boundary rows as python ints (one host sync per call)."""
    if boundary is None:
        return [[0, 0, S, T]] * B
    if boundary.shape != (B, 4) or boundary.dtype != torch.int64:
        raise ValueError(
            f"boundary must be int64 of shape ({B}, 4), got "
            f"{boundary.dtype} {tuple(boundary.shape)}"
        )
    rows = boundary.tolist()
    for s_begin, t_begin, s_end, t_end in rows:
        if not (0 <= s_begin <= s_end <= S and 0 <= t_begin <= t_end <= T):
            raise ValueError(
                f"invalid boundary row {[s_begin, t_begin, s_end, t_end]} for S={S}, T={T}"
            )
    return rows


def _group_cells(
    diag: list[int], col: list[int], device: torch.device
) -> dict[int, tuple[Tensor, Tensor]]:
    """Map diagonal k -> (batch indexes, column indexes) of the cells lying on it."""
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for b, (k, c) in enumerate(zip(diag, col)):
        groups.setdefault(k, ([], []))
        groups[k][0].append(b)
        groups[k][1].append(c)
    return {
        k: (torch.tensor(bs, device=device), torch.tensor(cs, device=device))
        for k, (bs, cs) in groups.items()
    }


def _skewed_transitions(px: Tensor, py: Tensor) -> Tensor:
    """Lay px (B, S, T+1) and py (B, S+1, T) out along anti-diagonals k = s + t.

    Returns ``tr`` (K, B, 3, S+1), K = S + T + 1, where for the cell (s, t) on diagonal k:
    ``tr[k, b, 0, s + 1] = px[b, s, t]``, ``tr[k, b, 1, s] = py[b, s, t]`` and
    ``tr[k, b, 2, s] = px[b, s, t]``; -inf where no transition exists.  Rows 0-1 serve
    the forward recursion, rows 1-2 the backward one.
    """
    B, S, T1 = px.shape
    N = S + 1
    tr = px.new_full((S + T1, B, 3, N), _NEG_INF)
    strides = (3 * N, 3 * B * N + 1, 3 * B * N)  # (b, s, t) -> [s + t, b, row, s]
    tr.as_strided(px.shape, strides, 1).copy_(px)
    tr.as_strided(py.shape, strides, N).copy_(py)
    tr.as_strided(px.shape, strides, 2 * N).copy_(px)
    return tr


def _unskew(g: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Inverse of the diagonal layout: g (K, B, S+1) -> (B, rows, cols), x[b,s,t] = g[s+t,b,s]."""
    _, B, N = g.shape
    return g.contiguous().as_strided(shape, (N, B * N + 1, B * N)).clone()


def _mutual_information(
    px: Tensor, py: Tensor, boundary: Optional[Tensor], want_grads: bool
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Log-likelihood (B,) and, if ``want_grads``, occupations of px and py."""
    B, S, T1 = px.shape
    T, N, K = T1 - 1, S + 1, S + T1
    rows = _boundary_rows(boundary, B, S, T)
    starts = _group_cells([r[0] + r[1] for r in rows], [r[0] + 1 for r in rows], px.device)
    ends = _group_cells([r[2] + r[3] for r in rows], [r[2] for r in rows], px.device)
    k_lo, k_hi = min(starts), max(ends)
    zero = px.new_zeros(())

    # Forward.  p[k, b, j] = alpha of cell (s = j - 1, t = k - s); column 0 is padding.
    tr = _skewed_transitions(px, py)
    fwd_tr = tr[:, :, 0:2].unbind(0)  # per diagonal: (px(s - 1), py(s)) for s = 0..S
    p = px.new_full((K, B, N + 1), _NEG_INF)
    # per diagonal: window 0 = alpha(s - 1, t), window 1 = alpha(s, t - 1), for s = 0..S
    windows, outs = p.unfold(2, N, 1).unbind(0), p[:, :, 1:].unbind(0)
    p[k_lo].index_put_(starts[k_lo], zero)
    for k in range(k_lo + 1, k_hi + 1):
        via_x, via_y = (windows[k - 1] + fwd_tr[k - 1]).unbind(1)
        torch.logaddexp(via_x, via_y, out=outs[k])
        if k in starts:
            p[k].index_put_(starts[k], zero)
    end_k = torch.tensor([r[2] + r[3] for r in rows], device=px.device)
    end_s = torch.tensor([r[2] + 1 for r in rows], device=px.device)
    scores = p[end_k, torch.arange(B, device=px.device), end_s]
    if not want_grads:
        return scores, None, None

    # Backward.  q[k, b, s] = beta of cell (s, t = k - s); column S + 1 is padding.
    bwd_tr = tr[:, :, 1:3].unbind(0)  # per diagonal: (py(s), px(s)) for s = 0..S
    q = px.new_full((K + 1, B, N + 1), _NEG_INF)
    # per diagonal: window 0 = beta(s, t + 1), window 1 = beta(s + 1, t), for s = 0..S
    windows, outs = q.unfold(2, N, 1).unbind(0), q[:, :, :N].unbind(0)
    q[k_hi].index_put_(ends[k_hi], zero)
    for k in range(k_hi - 1, k_lo - 1, -1):
        via_y, via_x = (windows[k + 1] + bwd_tr[k]).unbind(1)
        torch.logaddexp(via_y, via_x, out=outs[k])
        if k in ends:
            q[k].index_put_(ends[k], zero)

    # Occupations exp(alpha + transition + beta(next) - total).  An unreachable end
    # (total = -inf) makes every term -inf, so the guard only avoids (-inf) - (-inf).
    total = torch.where(torch.isfinite(scores), scores, zero)
    alpha = p[:, :, 1:] - total.unsqueeze(1)
    px_grad = _unskew((alpha + tr[:, :, 2] + q[1:, :, 1:]).exp_(), (B, S, T1))
    py_grad = _unskew((alpha + tr[:, :, 1] + q[1:, :, :N]).exp_(), (B, N, T))
    return scores, px_grad, py_grad


class _MutualInformationFunction(torch.autograd.Function):
    """Autograd wrapper: the occupations computed in forward are the gradients."""

    @staticmethod
    def forward(
        ctx, px: Tensor, py: Tensor, boundary: Optional[Tensor], return_grad: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        want = return_grad or ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        scores, px_grad, py_grad = _mutual_information(px, py, boundary, want)
        if px_grad is None:
            px_grad, py_grad = px.new_empty(0), py.new_empty(0)
        ctx.save_for_backward(px_grad, py_grad)
        ctx.mark_non_differentiable(px_grad, py_grad)
        return scores, px_grad, py_grad

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_scores: Tensor, _gx: Tensor, _gy: Tensor):
        px_grad, py_grad = ctx.saved_tensors
        g = grad_scores.reshape(-1, 1, 1)
        return px_grad * g, py_grad * g, None, None


def _check_px_py(px: Tensor, py: Tensor, **_) -> None:
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError("px and py must be 3-dimensional")
    B, S, T1 = px.shape
    if py.shape != (B, S + 1, T1 - 1):
        raise ValueError(
            f"py must have shape (B, S+1, T) = {(B, S + 1, T1 - 1)} for px of "
            f"shape (B, S, T+1) = {tuple(px.shape)} (modified RNN-T unsupported)"
        )
    if px.dtype != py.dtype or not px.is_floating_point():
        raise ValueError("px and py must share one floating point dtype")


@_k2_or_torch(_check_px_py)
def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Optional[Tensor] = None, return_grad: bool = False
) -> LossAndGrads:
    """Total log-probability of all monotonic paths through the (S+1) x (T+1) lattice.

    Args:
      px: (B, S, T+1) float; ``px[b, s, t]`` scores the move (s, t) -> (s+1, t).
      py: (B, S+1, T) float; ``py[b, s, t]`` scores the move (s, t) -> (s, t+1).
      boundary: optional int64 (B, 4) ``[s_begin, t_begin, s_end, t_end]``; default
        ``[0, 0, S, T]``.
      return_grad: also return the occupations ``(px_grad, py_grad)`` of shapes
        (B, S, T+1) and (B, S+1, T), i.e. d scores.sum() / d (px, py).

    Returns:
      ``scores`` (B,) with ``scores[b] = p[b, s_end, t_end]`` of the recursion
      ``p[s_begin, t_begin] = 0``,
      ``p[s, t] = logaddexp(p[s-1, t] + px[s-1, t], p[s, t-1] + py[s, t-1])``
      (out-of-range terms are -inf), or ``(scores, (px_grad, py_grad))``.
    """
    scores, px_grad, py_grad = _MutualInformationFunction.apply(px, py, boundary, return_grad)
    return (scores, (px_grad, py_grad)) if return_grad else scores


# ---------------------------------------------------------------- log-probabilities


def _finish_px(px: Tensor, boundary: Optional[Tensor]) -> Tensor:
    """(B, S, T) -> (B, S, T+1) contiguous, -inf in column T and in column t_end."""
    px = F.pad(px, (0, 1), value=_NEG_INF)
    if boundary is not None:
        cols = torch.arange(px.shape[2], device=px.device)
        px = px.masked_fill((cols == boundary[:, 3:4]).unsqueeze(1), _NEG_INF)
    return px


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor, **_) -> None:
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(
            f"expected lm (B, S+1, C) and am (B, T, C), got {tuple(lm.shape)} and {tuple(am.shape)}"
        )
    if symbols.shape != (lm.shape[0], lm.shape[1] - 1):
        raise ValueError(f"symbols must have shape (B, S) = {(lm.shape[0], lm.shape[1] - 1)}")


def _lm_am_terms(
    lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gathered scores: px_am (B, S, T), px_lm (B, S, 1), py_am (B, 1, T), py_lm (B, S+1, 1)."""
    B, T, _ = am.shape
    S = symbols.shape[1]
    px_am = torch.gather(am, 2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)
    px_lm = torch.gather(lm[:, :S], 2, symbols.unsqueeze(2))
    py_am = am[:, :, termination_symbol].unsqueeze(1)
    py_lm = lm[:, :, termination_symbol].unsqueeze(2)
    return px_am, px_lm, py_am, py_lm


@_k2_or_torch(_check_lm_am)
def get_rnnt_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """px, py of the "simple" joiner ``logits[b, t, s] = lm[b, s] + am[b, t]``.

    The normaliser ``logsumexp_c(lm[b, s, c] + am[b, t, c])`` is computed as
    ``log(exp(lm - max) @ exp(am - max)^T) + maxes``, never materialising (B, S, T, C).

    Args:
      lm: (B, S+1, C) decoder ("language model") part of the logits.
      am: (B, T, C) encoder ("acoustic model") part of the logits.
      symbols: int64 (B, S).
      termination_symbol: blank id in [0, C).
      boundary: optional int64 (B, 4).

    Returns:
      px (B, S, T+1) (columns T and t_end are -inf) and py (B, S+1, T).
    """
    lm_max = lm.detach().amax(2, keepdim=True)  # (B, S+1, 1)
    am_max = am.detach().amax(2, keepdim=True)  # (B, T, 1)
    prod = torch.matmul((lm - lm_max).exp(), (am - am_max).exp().transpose(1, 2))
    norm = (prod + torch.finfo(prod.dtype).tiny).log() + lm_max + am_max.transpose(1, 2)
    px_am, px_lm, py_am, py_lm = _lm_am_terms(lm, am, symbols, termination_symbol)
    S = symbols.shape[1]
    px = _finish_px(px_am + px_lm - norm[:, :S], boundary)
    py = (py_am + py_lm - norm).contiguous()
    return px, py


@_k2_or_torch(_check_lm_am)
def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """px, py of the simple joiner, interpolated in log space as in k2::

        (1 - lm_only_scale - am_only_scale) * combined
          + lm_only_scale * (log_softmax(lm) only)
          + am_only_scale * (am with a unigram prior, normalised over the vocabulary)

    The unigram prior is the mean of ``softmax(lm[b, s])`` over positions.  Unlike k2,
    only valid positions ``s_begin <= s <= s_end`` enter that mean when ``boundary`` is
    given, so padded decoder rows do not leak into the loss (identical to k2 otherwise).

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: int64 (B, S); termination_symbol: blank id;
      lm_only_scale, am_only_scale: interpolation weights; boundary: optional int64 (B, 4).

    Returns:
      px (B, S, T+1) (columns T and t_end are -inf) and py (B, S+1, T).
    """
    B, S1, _ = lm.shape
    S = S1 - 1
    tiny = torch.finfo(lm.dtype).tiny
    lm_max = lm.detach().amax(2, keepdim=True)  # (B, S+1, 1)
    am_max = am.detach().amax(2, keepdim=True)  # (B, T, 1)
    lm_probs = (lm - lm_max).exp()
    am_probs = (am - am_max).exp()
    prod = torch.matmul(lm_probs, am_probs.transpose(1, 2))
    norm = (prod + tiny).log() + lm_max + am_max.transpose(1, 2)  # (B, S+1, T)

    lm_sum = lm_probs.sum(2, keepdim=True)  # (B, S+1, 1)
    if boundary is None:
        weights = lm.new_full((B, S1), 1.0 / (B * S1))
    else:
        pos = torch.arange(S1, device=lm.device)
        valid = (pos >= boundary[:, 0:1]) & (pos <= boundary[:, 2:3])
        weights = valid.to(lm.dtype) / valid.sum()
    unigram = torch.einsum("bs,bsc->c", weights, lm_probs / lm_sum) + tiny  # (C,)
    amonly_norm = (torch.matmul(am_probs, unigram).log() + am_max.squeeze(2)).unsqueeze(1)
    log_unigram = unigram.log()
    lmonly_norm = lm_sum.log() + lm_max  # (B, S+1, 1)

    px_am, px_lm, py_am, py_lm = _lm_am_terms(lm, am, symbols, termination_symbol)
    px = px_am + px_lm - norm[:, :S]
    px_lmonly = px_lm - lmonly_norm[:, :S]
    px_amonly = px_am + log_unigram[symbols].unsqueeze(2) - amonly_norm
    py = py_am + py_lm - norm
    py_lmonly = py_lm - lmonly_norm
    py_amonly = py_am + log_unigram[termination_symbol] - amonly_norm

    combined_scale = 1.0 - lm_only_scale - am_only_scale
    px = combined_scale * px + lm_only_scale * px_lmonly + am_only_scale * px_amonly
    py = combined_scale * py + lm_only_scale * py_lmonly + am_only_scale * py_amonly
    return _finish_px(px, boundary), py.contiguous()


class _JointLogProbs(torch.autograd.Function):
    """log_softmax(logits) at given symbols and at blank, with a single-buffer backward.

    logits (B, T, R, C), sym int64 (B, T, R) -> (px, py), each (B, T, R).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, sym: Tensor, blank: int) -> tuple[Tensor, Tensor]:
        norm = torch.logsumexp(logits, dim=3)
        px = torch.gather(logits, 3, sym.unsqueeze(3)).squeeze(3) - norm
        py = logits[..., blank] - norm
        ctx.save_for_backward(logits, sym, norm)
        ctx.blank = blank
        return px, py

    @staticmethod
    @once_differentiable
    def backward(ctx, gx: Tensor, gy: Tensor):
        logits, sym, norm = ctx.saved_tensors
        grad = (logits - norm.unsqueeze(3)).exp_()  # softmax
        grad.mul_(-(gx + gy).unsqueeze(3))
        grad.scatter_add_(3, sym.unsqueeze(3), gx.unsqueeze(3))
        grad[..., ctx.blank] += gy
        return grad, None, None


def _symbols_with_blank(symbols: Tensor, termination_symbol: int) -> Tensor:
    """(B, S) -> (B, S+1), blank appended (position S emits nothing but blank)."""
    return F.pad(symbols, (0, 1), value=termination_symbol)


def _check_joint(logits: Tensor, symbols: Tensor, **_) -> None:
    if logits.ndim != 4 or symbols.shape != (logits.shape[0], logits.shape[2] - 1):
        raise ValueError(
            f"expected logits (B, T, S+1, C) and symbols (B, S), got "
            f"{tuple(logits.shape)} and {tuple(symbols.shape)}"
        )


@_k2_or_torch(_check_joint)
def get_rnnt_logprobs_joint(
    logits: Tensor, symbols: Tensor, termination_symbol: int, boundary: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """px, py from full joiner output.

    Args:
      logits: (B, T, S+1, C) unnormalised joiner output.
      symbols: int64 (B, S).
      termination_symbol: blank id in [0, C).
      boundary: optional int64 (B, 4).

    Returns:
      px (B, S, T+1) (columns T and t_end are -inf) and py (B, S+1, T).
    """
    B, T, S1, _ = logits.shape
    sym = _symbols_with_blank(symbols, termination_symbol).unsqueeze(1).expand(B, T, S1)
    px, py = _JointLogProbs.apply(logits, sym, termination_symbol)  # (B, T, S+1)
    return _finish_px(px[:, :, :-1].transpose(1, 2), boundary), py.transpose(1, 2).contiguous()


def _check_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, **_) -> None:
    if logits.ndim != 4 or ranges.shape != logits.shape[:3] or symbols.ndim != 2:
        raise ValueError(
            f"expected logits (B, T, R, C), ranges (B, T, R), symbols (B, S); "
            f"got {tuple(logits.shape)}, {tuple(ranges.shape)}, "
            f"{tuple(symbols.shape)}"
        )
    R, S = logits.shape[2], symbols.shape[1]
    if R > S + 1:
        raise ValueError(f"s_range={R} exceeds S + 1 = {S + 1}")


@_k2_or_torch(_check_pruned)
def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """px, py from pruned joiner output, scattered back to the full lattice.

    Args:
      logits: (B, T, R, C) joiner output on the pruned band (see :func:`do_rnnt_pruning`).
      symbols: int64 (B, S).
      ranges: int64 (B, T, R) symbol positions of the band (see
        :func:`get_rnnt_prune_ranges`); values in [0, S].
      termination_symbol: blank id in [0, C).
      boundary: optional int64 (B, 4).

    Returns:
      px (B, S, T+1) and py (B, S+1, T), -inf outside the band (and in columns T, t_end).
    """
    B, T, _, _ = logits.shape
    S = symbols.shape[1]
    sym = _symbols_with_blank(symbols, termination_symbol)
    band_sym = torch.gather(sym.unsqueeze(1).expand(B, T, S + 1), 2, ranges)
    px_band, py_band = _JointLogProbs.apply(logits, band_sym, termination_symbol)
    full = px_band.new_full((B, T, S + 1), _NEG_INF)
    px = full.scatter(2, ranges, px_band)[:, :, :S].transpose(1, 2)
    py = full.scatter(2, ranges, py_band).transpose(1, 2).contiguous()
    return _finish_px(px, boundary), py


# ---------------------------------------------------------------------------- losses


def _reduce(loglik: Tensor, reduction: str) -> Tensor:
    """Negated log-likelihood (B,) reduced as in k2: none | sum | mean over the batch."""
    if reduction == "none":
        return -loglik
    if reduction == "sum":
        return -loglik.sum()
    if reduction == "mean":
        return -loglik.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _loss_from_logprobs(
    px: Tensor, py: Tensor, boundary: Optional[Tensor], reduction: str, return_grad: bool
) -> LossAndGrads:
    if return_grad:
        loglik, grads = mutual_information_recursion(px, py, boundary, return_grad=True)
        return _reduce(loglik, reduction), grads
    return _reduce(mutual_information_recursion(px, py, boundary), reduction)


@_k2_or_torch()
def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Full RNN-T loss from joiner output.

    Args:
      logits: (B, T, S+1, C) unnormalised joiner output.
      symbols: int64 (B, S).
      termination_symbol: blank id in [0, C).
      boundary: optional int64 (B, 4), default [0, 0, S, T].
      reduction: "none" -> (B,), "sum" or "mean" (over the batch) -> scalar.

    Returns:
      Negative log-likelihood, reduced.
    """
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction, False)


@_k2_or_torch()
def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    reduction: str = "mean",
    return_grad: bool = False,
) -> LossAndGrads:
    """RNN-T loss of the "simple" (additive) joiner ``lm[b, s] + am[b, t]``.

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: int64 (B, S);
      termination_symbol: blank id; boundary: optional int64 (B, 4);
      reduction: "none" | "sum" | "mean".
      return_grad: also return the occupations ``(px_grad, py_grad)``, shapes
        (B, S, T+1) and (B, S+1, T), for :func:`get_rnnt_prune_ranges`.

    Returns:
      ``loss`` or ``(loss, (px_grad, py_grad))``.
    """
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction, return_grad)


@_k2_or_torch()
def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    reduction: str = "mean",
    return_grad: bool = False,
) -> LossAndGrads:
    """Simple RNN-T loss smoothed with LM-only and AM-only terms (see
    :func:`get_rnnt_logprobs_smoothed`).

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: int64 (B, S); termination_symbol: blank id;
      lm_only_scale, am_only_scale: interpolation weights;
      boundary: optional int64 (B, 4); reduction: "none" | "sum" | "mean";
      return_grad: also return the occupations (B, S, T+1) and (B, S+1, T).

    Returns:
      ``loss`` or ``(loss, (px_grad, py_grad))``.
    """
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary
    )
    return _loss_from_logprobs(px, py, boundary, reduction, return_grad)


@_k2_or_torch()
def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """RNN-T loss restricted to the pruned band; equals :func:`rnnt_loss` when the band
    covers every symbol position (``s_range >= S + 1``).

    Args:
      logits: (B, T, R, C) joiner output on the band.
      symbols: int64 (B, S).
      ranges: int64 (B, T, R) from :func:`get_rnnt_prune_ranges`.
      termination_symbol: blank id; boundary: optional int64 (B, 4);
      reduction: "none" | "sum" | "mean".

    Returns:
      Negative log-likelihood, reduced.
    """
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary)
    return _loss_from_logprobs(px, py, boundary, reduction, False)


# --------------------------------------------------------------------------- pruning


def _suffix_min(x: Tensor) -> Tensor:
    """out[..., t] = min(x[..., t:]) (the largest non-decreasing lower bound of x)."""
    return torch.flip(torch.cummin(torch.flip(x, (-1,)), dim=-1).values, (-1,))


def _check_prune_ranges(
    px_grad: Tensor, py_grad: Tensor, boundary: Optional[Tensor], s_range: int, **_
) -> None:
    B, S, T1 = px_grad.shape
    T = T1 - 1
    if py_grad.shape != (B, S + 1, T):
        raise ValueError(
            f"expected px_grad (B, S, T+1) and py_grad (B, S+1, T), got "
            f"{tuple(px_grad.shape)} and {tuple(py_grad.shape)}"
        )
    for _, _, s_end, t_end in _boundary_rows(boundary, B, S, T):
        if s_end > 0 and t_end == 0:
            raise ValueError("a sequence with symbols but no frames cannot be aligned")
        needed = (s_end - 1) // max(t_end, 1) + 2
        if s_range < needed:
            raise ValueError(
                f"s_range={s_range} is too small for {s_end} symbols in "
                f"{t_end} frames: need s_range >= {needed}, otherwise no "
                f"complete path survives pruning"
            )


@_k2_or_torch(_check_prune_ranges)
def get_rnnt_prune_ranges(
    px_grad: Tensor, py_grad: Tensor, boundary: Optional[Tensor], s_range: int
) -> Tensor:
    """Per-frame symbol windows for the pruned loss, from simple-loss occupations.

    For each frame, the start ``s`` maximising the node occupation (px_grad + py_grad, as
    in k2) summed over ``[s, s + s_range)`` is chosen; frames from ``t_end - 1`` on are
    forced to the window ending at ``s_end``; then the starts are made non-decreasing,
    0 at frame 0, and increase by at most ``s_range - 1`` per frame, so that a complete
    path always survives.  ``s_range`` is capped at ``S + 1`` (no pruning).

    Args:
      px_grad: (B, S, T+1) occupations of px (``return_grad`` of the simple loss).
      py_grad: (B, S+1, T) occupations of py.
      boundary: int64 (B, 4) ``[0, 0, s_end, t_end]``; None means ``[0, 0, S, T]``.
      s_range: window width R; must be >= ``(s_end - 1) // t_end + 2`` for every sequence.

    Returns:
      int64 ranges (B, T, min(s_range, S+1)): ``ranges[b, t] = start[b, t] + arange(R)``.
    """
    B, S, T1 = px_grad.shape
    T = T1 - 1
    s_range = min(s_range, S + 1)
    device = px_grad.device
    if boundary is None:
        boundary = torch.tensor([[0, 0, S, T]], device=device).expand(B, 4)

    # Node occupation (s, t), with a zero row in front for the windowed prefix sums.
    node = F.pad(py_grad, (0, 0, 1, 0))
    node[:, 1 : S + 1] += px_grad[:, :, :T]
    cum = torch.cumsum(node, dim=1)  # cum[:, j] = sum of node[s < j]   (B, S+2, T)
    start = torch.argmax(cum[:, s_range:] - cum[:, : S + 2 - s_range], dim=1)  # (B, T)

    frames = torch.arange(T, device=device)
    last = (boundary[:, 2:3] - s_range + 1).clamp(min=0)
    start = torch.where(frames < boundary[:, 3:4] - 1, start, last)

    # Non-decreasing, then start[t+1] - start[t] <= s_range - 1 (by making
    # (s_range - 1) * t - start non-decreasing), and start[0] == 0.
    start = _suffix_min(start)
    slack = _suffix_min((s_range - 1) * frames - start).clamp(min=0)
    start = (s_range - 1) * frames - slack
    return start.unsqueeze(2) + torch.arange(s_range, device=device)


def _check_pruning(am: Tensor, lm: Tensor, ranges: Tensor, **_) -> None:
    if ranges.ndim != 3 or ranges.shape[:2] != am.shape[:2] or lm.shape[0] != am.shape[0]:
        raise ValueError(
            f"expected am (B, T, C), lm (B, S+1, C), ranges (B, T, R); got "
            f"{tuple(am.shape)}, {tuple(lm.shape)}, {tuple(ranges.shape)}"
        )


@_k2_or_torch(_check_pruning)
def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Gather encoder and decoder outputs on the pruned band.

    Args:
      am: (B, T, C) encoder output (joiner input).
      lm: (B, S+1, C) decoder output (joiner input).
      ranges: int64 (B, T, R) from :func:`get_rnnt_prune_ranges`.

    Returns:
      ``am_pruned`` (B, T, R, C) (an expanded view) and ``lm_pruned`` (B, T, R, C) with
      ``lm_pruned[b, t, r] = lm[b, ranges[b, t, r]]``.
    """
    B, T, R = ranges.shape
    S1, C = lm.shape[1], lm.shape[2]
    flat = (ranges + S1 * torch.arange(B, device=ranges.device).view(B, 1, 1)).reshape(-1)
    lm_pruned = lm.reshape(B * S1, C).index_select(0, flat).view(B, T, R, C)
    return am.unsqueeze(2).expand(B, T, R, am.shape[2]), lm_pruned
