"""Multi-codebook vector quantization of teacher embeddings (direct-sum / additive).

A vector ``x`` of dimension ``D`` is approximated by ``mean + sum_n C[n, i_n]``: ``N``
codebooks of ``K = 256`` entries, so one byte per codebook and ``N`` bytes per frame.
This is the same representation as the ``multi_quantization`` package that icefall's
MVQ-KD uses (Guo et al., 2022), trained differently:

* **Initialisation**: residual k-means. Codebook ``n`` is k-means on what codebooks
  ``0 .. n-1`` leave unexplained.
* **Encoding** (:meth:`Quantizer.encode`): residual assignment with a small beam, then
  ``refine_iters`` passes of iterated conditional modes: each codebook in turn is
  re-chosen optimally given all the others. Every pass can only lower the error.
* **Training** (:func:`train_quantizer`): alternate encoding the training frames with
  updating all codebooks jointly by least squares (the codebooks are the solution of
  a ridge regression of ``x`` on the one-hot indexes; additive quantization / LSQ).
  The shrinkage of the regression keeps rarely chosen entries from fitting the noise
  of their few frames.
* **Stopping**: a few percent of the training frames are held out; after every round
  they are encoded from scratch, as new data will be. Training keeps the best codebooks
  and stops when a round no longer lowers their error, so the number of rounds adapts
  to the data (1 on a Gaussian, 8-20 on a trained teacher's layer) instead of a budget.

No gradient descent, no learned encoder network: on CPU, training on 60k frames takes
minutes instead of the reference's quarter hours to hours; the held-out errors of both
on several embedding families are in ``benchmarks/RESULTS.md``
(``benchmarks/bench_quantizer.py``).

Shapes: ``F`` frames, ``D`` embedding dim, ``N`` codebooks, ``K`` entries per codebook.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mvq_kd.cli import option
from mvq_kd.utils import atomic_path

CODEBOOK_SIZE = 256  # one byte per codebook index
MIN_STOP_FRAMES = 100  # fewer held-out frames than this: the training error decides


@dataclass
class QuantizerConfig:
    """Training settings of :func:`train_quantizer`.

    Attributes:
        num_codebooks: ``N``, bytes per frame.
        kmeans_iters: Lloyd iterations per codebook of the residual k-means start.
        train_iters: at most this many rounds of (least-squares codebook update, encode).
        stop_fraction: fraction of the training frames held out for the stopping rule:
            after every round their error under the from-scratch encoder (as new data
            will be encoded) is measured; the best codebooks are kept and training stops
            at the first round that lowers it by less than ``stop_tol`` (relative).
            0: no frames held out, the training error decides instead.
        stop_tol: relative held-out improvement a round must bring to go on.
        refine_iters: ICM passes after the initial assignment, in training and in
            :meth:`Quantizer.encode`.
        beam: partial sums kept per frame by the initial residual assignment (1 =
            greedy), in training and in :meth:`Quantizer.encode`.
        ridge: ridge regularisation of the least-squares update, relative to the mean
            number of frames per entry: an entry chosen by ``ridge * F / K`` frames is
            pulled halfway to zero. Rarely used entries otherwise fit the noise of their
            few training frames. Each value gets its own series of rounds from the
            k-means start and the held-out stopping-rule frames pick the best: on a noisy
            low-rank family 0.1 was best (held-out 0.157 against 0.161 at 0.03), on the
            synth teacher's layer 2 0.01 (0.093 against 0.100 at 0.1; 8 bytes).
        chunk_frames: frames encoded at once (bounds memory: ``chunk * K`` distances).
        seed: k-means initialisation and the held-out split.
    """

    num_codebooks: int = option(8, "bytes per teacher frame")
    kmeans_iters: int = 15
    train_iters: int = option(20, "at most this many rounds of (codebook update, encode)")
    stop_fraction: float = option(
        0.05, "training frames held out to decide when to stop (0: the training error decides)"
    )
    stop_tol: float = option(1e-3, "relative held-out improvement a round must bring to go on")
    refine_iters: int = option(3, "ICM passes after the initial assignment")
    beam: int = option(4, "partial sums kept per frame by the initial assignment (1: greedy)")
    ridge: Tuple[float, ...] = option(
        (0.01, 0.1),
        "shrinkage of the codebook update: an entry chosen by ridge x (frames per entry) "
        "frames is pulled halfway to zero; one series of rounds per value, the best kept",
        nargs="+",
    )
    chunk_frames: int = 8192
    seed: int = option(0, "k-means initialisation and the held-out split")

    def __post_init__(self) -> None:
        if not 1 <= self.num_codebooks <= 64:
            raise ValueError(f"num_codebooks must be in 1..64, got {self.num_codebooks}")
        if self.train_iters < 0 or self.refine_iters < 0 or self.kmeans_iters < 1:
            raise ValueError("train_iters/refine_iters must be >= 0 and kmeans_iters >= 1")
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if not self.ridge or min(self.ridge) <= 0:
            raise ValueError(f"ridge needs one or more values > 0, got {self.ridge}")
        if not 0.0 <= self.stop_fraction < 0.5:
            raise ValueError(f"stop_fraction must be in [0, 0.5), got {self.stop_fraction}")


class Quantizer(nn.Module):
    """``N`` additive codebooks of 256 entries (``codebooks``: (N, K, D)) plus a mean (D,).

    ``encode`` maps (..., D) float embeddings to (..., N) uint8 indexes, ``decode``
    maps them back. ``id`` is a content hash: manifests record it so that training
    can check its indexes come from the quantizer it expects.
    """

    def __init__(
        self, codebooks: Tensor, mean: Tensor, refine_iters: int = 3, beam: int = 4
    ) -> None:
        super().__init__()
        if codebooks.dim() != 3 or codebooks.size(1) != CODEBOOK_SIZE:
            raise ValueError(
                f"codebooks must be (N, {CODEBOOK_SIZE}, D), got {tuple(codebooks.shape)}"
            )
        if mean.shape != codebooks.shape[2:]:
            raise ValueError(f"mean must be ({codebooks.size(2)},), got {tuple(mean.shape)}")
        self.register_buffer("codebooks", codebooks.detach().float().clone())
        self.register_buffer("mean", mean.detach().float().clone())
        self.refine_iters = refine_iters
        self.beam = beam

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.size(0)

    @property
    def dim(self) -> int:
        return self.codebooks.size(2)

    @property
    def id(self) -> str:
        """16 hex digits identifying the codebooks and mean."""
        h = hashlib.sha1()
        for t in (self.codebooks, self.mean):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ coding

    @torch.no_grad()
    def encode(self, x: Tensor, chunk_frames: int = 8192) -> Tensor:
        """(..., D) float -> (..., N) uint8 codebook indexes."""
        if x.size(-1) != self.dim:
            raise ValueError(f"expected embeddings of dim {self.dim}, got {x.size(-1)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim).to(self.codebooks.device, torch.float32)
        out = torch.empty(flat.size(0), self.num_codebooks, dtype=torch.uint8, device=flat.device)
        for start in range(0, flat.size(0), chunk_frames):
            idx = _encode(
                flat[start : start + chunk_frames] - self.mean,
                self.codebooks,
                self.refine_iters,
                self.beam,
            )
            out[start : start + chunk_frames] = idx.to(torch.uint8)
        return out.reshape(*lead, self.num_codebooks).to(x.device)

    @torch.no_grad()
    def decode(self, idx: Tensor) -> Tensor:
        """(..., N) integer indexes -> (..., D) float32 reconstruction."""
        if idx.size(-1) != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} indexes per frame, got {idx.size(-1)}")
        idx = idx.to(self.codebooks.device).long()
        lead = idx.shape[:-1]
        flat = _decode_centred(self.codebooks, idx.reshape(-1, self.num_codebooks))
        return flat.reshape(*lead, self.dim) + self.mean

    @torch.no_grad()
    def relative_error(self, x: Tensor) -> float:
        """``sum ||decode(encode(x)) - x||^2 / sum ||x - mean(x)||^2`` for x: (F, D)."""
        x = x.to(self.codebooks.device, torch.float32)
        err = (self.decode(self.encode(x)) - x).pow(2).sum()
        return float(err / (x - x.mean(0)).pow(2).sum())

    # ------------------------------------------------------------------ files

    def save(self, path: Union[str, Path]) -> None:
        """Write atomically; :meth:`load` reads it back and checks the id."""
        state = {
            "codebooks": self.codebooks.cpu(),
            "mean": self.mean.cpu(),
            "refine_iters": self.refine_iters,
            "beam": self.beam,
            "id": self.id,
        }
        with atomic_path(Path(path)) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: Union[str, Path], expected_id: Optional[str] = None) -> "Quantizer":
        """Load a saved quantizer; ``expected_id`` (e.g. from a manifest) must match."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        q = cls(state["codebooks"], state["mean"], state["refine_iters"], state["beam"])
        if q.id != state["id"]:
            raise ValueError(
                f"{path} is corrupt: its content hash {q.id} != stored id {state['id']}"
            )
        if expected_id is not None and q.id != expected_id:
            raise ValueError(
                f"Quantizer {path} has id {q.id}, but the codebook indexes were made by "
                f"quantizer {expected_id}: recompute the indexes or point to the right quantizer"
            )
        return q


def _sq_dist_argmin(r: Tensor, book: Tensor, book_sq: Tensor) -> Tensor:
    """Index of the nearest row of ``book`` (K, D) for every row of r (F, D)."""
    return (book_sq[None, :] - 2.0 * r @ book.t()).argmin(dim=1)


def _beam_assign(r: Tensor, codebooks: Tensor, sq: Tensor, beam: int) -> Tensor:
    """Residual assignment keeping the ``beam`` best partial sums per frame.

    r: (F, D) centred frames -> (F, N) int64 indexes of the best complete candidate.
    The squared error of a candidate is tracked exactly with
    ``||res - c||^2 = ||res||^2 - 2 res.c + ||c||^2``.
    """
    f, d = r.shape
    n_books, k, _ = codebooks.shape
    res = r[:, None, :]  # (F, B, D)
    err = r.pow(2).sum(-1, keepdim=True)  # (F, B)
    idx = torch.zeros(f, 1, 0, dtype=torch.int64, device=r.device)  # (F, B, n)
    for n in range(n_books):
        scores = err[..., None] - 2.0 * res @ codebooks[n].t() + sq[n]  # (F, B, K)
        top = scores.reshape(f, -1).topk(min(beam, scores.size(1) * k), dim=1, largest=False)
        src, entry = top.indices // k, top.indices % k  # (F, B')
        res = res.gather(1, src[..., None].expand(-1, -1, d)) - codebooks[n][entry]
        idx = torch.cat([idx.gather(1, src[..., None].expand(-1, -1, n)), entry[..., None]], 2)
        err = top.values
    best = err.argmin(dim=1)
    return idx[torch.arange(f, device=r.device), best]


def _encode(r: Tensor, codebooks: Tensor, refine_iters: int, beam: int = 1) -> Tensor:
    """Beam residual assignment + ICM passes. r: (F, D) centred -> (F, N) int64."""
    n_books = codebooks.size(0)
    sq = codebooks.pow(2).sum(-1)  # (N, K)
    idx = _beam_assign(r, codebooks, sq, beam)
    res = r - codebooks[torch.arange(n_books, device=r.device), idx].sum(1)
    for _ in range(refine_iters):
        for n in range(n_books):
            res += codebooks[n][idx[:, n]]
            idx[:, n] = _sq_dist_argmin(res, codebooks[n], sq[n])
            res -= codebooks[n][idx[:, n]]
    return idx


def _kmeans(x: Tensor, k: int, iters: int, gen: torch.Generator) -> Tensor:
    """Lloyd's k-means on x (F, D) from k random distinct frames; empty clusters are
    re-seeded with the frames worst explained. Returns (k, D) centres."""
    centres = x[torch.randperm(x.size(0), generator=gen, device="cpu")[:k].to(x.device)].clone()
    for _ in range(iters):
        assign = _sq_dist_argmin(x, centres, centres.pow(2).sum(-1))
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centres = sums / counts.clamp(min=1)[:, None]
        if empty.any():
            dist = (x - centres[assign]).pow(2).sum(-1)
            worst = dist.topk(int(empty.sum())).indices
            centres[empty] = x[worst]
    return centres


def _least_squares_codebooks(x: Tensor, idx: Tensor, k: int, ridge: float) -> Tensor:
    """Jointly optimal codebooks (N, K, D) for fixed indexes idx (F, N) and data x (F, D).

    Solves ``(B^T B + lambda I) C = B^T x`` with B the (F, N*K) one-hot design matrix;
    ``B^T B`` is built from pairwise index co-occurrence counts.
    """
    f, n = idx.shape
    d = x.size(1)
    flat = idx + torch.arange(n, device=idx.device) * k  # (F, N) column in the design
    gram = torch.zeros(n * k, n * k, dtype=torch.float64, device=x.device)
    for a in range(n):  # block (a, b) of B^T B: how often entries i of a and j of b meet
        for b in range(a, n):
            pairs = torch.bincount(idx[:, a] * k + idx[:, b], minlength=k * k)
            block = pairs.view(k, k).to(torch.float64)
            gram[a * k : (a + 1) * k, b * k : (b + 1) * k] = block
            if a != b:
                gram[b * k : (b + 1) * k, a * k : (a + 1) * k] = block.t()
    rhs = torch.zeros(n * k, d, dtype=torch.float64, device=x.device)
    x64 = x.to(torch.float64)
    for a in range(n):
        rhs.index_add_(0, flat[:, a], x64)
    lam = ridge * f / k  # relative to the frames per entry
    gram.diagonal().add_(lam)
    chol = torch.linalg.cholesky(gram)
    sol = torch.cholesky_solve(rhs, chol)
    return sol.to(x.dtype).view(n, k, d)


def train_quantizer(
    x: Tensor,
    num_codebooks: int,
    config: Optional[QuantizerConfig] = None,
) -> Quantizer:
    """Train a quantizer of ``num_codebooks`` bytes per frame on x: (F, D) embeddings.

    Args:
        x: (F, D) training frames (any float dtype, CPU or CUDA; the work happens there).
        num_codebooks: N (overrides ``config.num_codebooks``).
        config: see :class:`QuantizerConfig`; its stopping-rule frames (held out of x)
            are the held-out error logged every round.

    Returns:
        the trained :class:`Quantizer`, on x's device.
    """
    cfg = QuantizerConfig(**{**asdict(config or QuantizerConfig()), "num_codebooks": num_codebooks})
    if x.dim() != 2 or x.size(0) < CODEBOOK_SIZE:
        raise ValueError(
            f"train_quantizer needs (frames, dim) data with >= {CODEBOOK_SIZE} frames, "
            f"got {tuple(x.shape)}"
        )
    x = x.float()
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    n_stop = int(x.size(0) * cfg.stop_fraction)
    if n_stop < MIN_STOP_FRAMES or x.size(0) - n_stop < CODEBOOK_SIZE:
        n_stop = 0  # too few frames to hold any out: the training error decides
    perm = torch.randperm(x.size(0), generator=gen).to(x.device)
    stop_x, x = x[perm[:n_stop]], x[perm[n_stop:]]
    mean = x.mean(0)
    r = x - mean
    books = []
    res = r.clone()
    for _ in range(cfg.num_codebooks):
        c = _kmeans(res, CODEBOOK_SIZE, cfg.kmeans_iters, gen)
        books.append(c)
        res -= c[_sq_dist_argmin(res, c, c.pow(2).sum(-1))]
    codebooks = torch.stack(books)

    def encode_all(books: Tensor, frames: Tensor) -> Tensor:
        return torch.cat(
            [
                _encode(frames[s : s + cfg.chunk_frames], books, cfg.refine_iters, cfg.beam)
                for s in range(0, frames.size(0), cfg.chunk_frames)
            ]
        )

    def error(books: Tensor, frames: Tensor, idx: Optional[Tensor] = None) -> float:
        """Relative error of centred frames; encoded from scratch unless idx is given."""
        idx = encode_all(books, frames) if idx is None else idx
        return float((frames - _decode_centred(books, idx)).pow(2).sum() / frames.pow(2).sum())

    def log_round(name: str, train_err: float, stop_err: Optional[float]) -> None:
        msg = f"quantizer {name}: train rel. error {train_err:.4f}"
        if stop_err is not None:
            msg += f", stopping-rule frames {stop_err:.4f}"
        logging.info(msg + f" ({time.time() - t0:.1f} s)")

    stop_r = stop_x - mean
    idx0 = encode_all(codebooks, r)
    err0 = error(codebooks, r, idx0)
    stop0 = error(codebooks, stop_r) if n_stop else None
    log_round("residual k-means", err0, stop0)

    def rounds(ridge: float) -> Tuple[Tensor, float]:
        """Alternate least-squares codebooks for the current indexes and re-encoding,
        from the k-means start. What counts is the error of new data under the
        from-scratch encoder: a round is kept when it lowers the error of the held-out
        stopping-rule frames (without them: of the training frames) by at least
        stop_tol, else the rounds stop. Returns the best codebooks and the error that
        decided (stopping-rule frames, else training frames)."""
        books, idx, err, stop_err = codebooks, idx0, err0, stop0
        for it in range(cfg.train_iters):
            candidate = _least_squares_codebooks(r, idx, CODEBOOK_SIZE, ridge)
            new_idx = encode_all(candidate, r)
            new_err = error(candidate, r, new_idx)
            new_stop = error(candidate, stop_r) if n_stop else None
            old, new = (stop_err, new_stop) if n_stop else (err, new_err)
            if new > old * (1.0 - cfg.stop_tol):
                if new < old:
                    books, err, stop_err = candidate, new_err, new_stop
                which = "stopping-rule" if n_stop else "training"
                logging.info(
                    f"quantizer ridge {ridge:g} round {it + 1}: {which} error {new:.4f} "
                    f"against {old:.4f}, less than {cfg.stop_tol:g} better: stopping"
                )
                break
            books, idx, err, stop_err = candidate, new_idx, new_err, new_stop
            log_round(f"ridge {ridge:g} round {it + 1}/{cfg.train_iters}", err, stop_err)
        return books, stop_err if n_stop else err

    # One series of rounds per ridge: how much shrinkage generalises depends on the data
    # (noisy families want more, a trained teacher's layers less); the held-out frames
    # (without them: the training frames) choose.
    best = None
    for ridge in cfg.ridge:
        books, score = rounds(ridge)
        if best is None or score < best[0]:
            best = (score, ridge, books)
    if len(cfg.ridge) > 1:
        logging.info(f"quantizer: ridge {best[1]:g} chosen ({best[0]:.4f})")
    codebooks = best[2]
    return Quantizer(codebooks, mean, cfg.refine_iters, cfg.beam)


def _decode_centred(codebooks: Tensor, idx: Tensor) -> Tensor:
    """(F, N) indexes -> (F, D) sum of codebook entries (no mean)."""
    return codebooks[torch.arange(codebooks.size(0), device=idx.device), idx].sum(1)
