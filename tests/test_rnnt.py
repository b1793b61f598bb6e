"""Tests of the pure-PyTorch pruned RNN-T loss family (:mod:`mvq_kd.rnnt`)."""

import math
import sys
import types

import pytest
import torch

from mvq_kd import rnnt

F64 = torch.float64
BLANK = 0


def logaddexp(a: float, b: float) -> float:
    m = max(a, b)
    return m if m == -math.inf else m + math.log(math.exp(a - m) + math.exp(b - m))


def naive_mi(px: torch.Tensor, py: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """Reference recursion: double python loop per sequence."""
    out = []
    for b, (s0, t0, s1, t1) in enumerate(boundary.tolist()):
        p = {}
        for s in range(s0, s1 + 1):
            for t in range(t0, t1 + 1):
                if (s, t) == (s0, t0):
                    p[s, t] = 0.0
                    continue
                a = p[s - 1, t] + px[b, s - 1, t].item() if s > s0 else -math.inf
                c = p[s, t - 1] + py[b, s, t - 1].item() if t > t0 else -math.inf
                p[s, t] = logaddexp(a, c)
        out.append(p[s1, t1])
    return torch.tensor(out, dtype=F64)


def naive_rnnt_nll(logits: torch.Tensor, symbols: torch.Tensor, boundary: torch.Tensor):
    """Textbook transducer NLL (alpha over (t, u), final blank on the last frame)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    out = []
    for b, (_, _, U, T) in enumerate(boundary.tolist()):
        alpha = {}
        for t in range(T):
            for u in range(U + 1):
                if (t, u) == (0, 0):
                    alpha[t, u] = 0.0
                    continue
                stay = alpha[t - 1, u] + logp[b, t - 1, u, BLANK].item() if t > 0 else -math.inf
                emit = (
                    alpha[t, u - 1] + logp[b, t, u - 1, symbols[b, u - 1]].item()
                    if u > 0
                    else -math.inf
                )
                alpha[t, u] = logaddexp(stay, emit)
        out.append(-(alpha[T - 1, U] + logp[b, T - 1, U, BLANK].item()))
    return torch.tensor(out, dtype=F64)


def ragged_boundary(B: int, S: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """[0, 0, S_b, T_b], S_b in [0, S], T_b in [min(S, T), T] (>= 1), maxima attained."""
    s_end = torch.randint(0, S + 1, (B,), generator=gen)
    t_end = torch.randint(max(1, min(S, T)), T + 1, (B,), generator=gen)
    s_end[0], t_end[-1] = S, T
    zeros = torch.zeros(B, dtype=torch.int64)
    return torch.stack([zeros, zeros, s_end, t_end], dim=1)


def random_problem(B=3, S=4, T=6, V=5, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    symbols = torch.randint(1, V, (B, S), generator=gen)
    boundary = ragged_boundary(B, S, T, gen)
    logits = torch.randn(B, T, S + 1, V, generator=gen, dtype=dtype)
    lm = torch.randn(B, S + 1, V, generator=gen, dtype=dtype)
    am = torch.randn(B, T, V, generator=gen, dtype=dtype)
    return symbols, boundary, logits, lm, am


def prune_ranges_for(lm, am, symbols, boundary, s_range):
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, symbols, BLANK, boundary=boundary, return_grad=True
    )
    return rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)


# ------------------------------------------------------------------ recursion


@pytest.mark.parametrize("B,S,T,seed", [(4, 5, 7, 0), (3, 1, 9, 1), (2, 8, 3, 2), (3, 0, 4, 3)])
def test_mutual_information_matches_naive(B, S, T, seed):
    gen = torch.Generator().manual_seed(seed)
    px = torch.randn(B, S, T + 1, generator=gen, dtype=F64)
    py = torch.randn(B, S + 1, T, generator=gen, dtype=F64)
    boundary = ragged_boundary(B, S, T, gen)
    boundary[-1, 0] = boundary[-1, 2] // 2  # a non-zero s_begin / t_begin too
    boundary[-1, 1] = boundary[-1, 3] // 2
    expected = naive_mi(px, py, boundary)
    torch.testing.assert_close(
        rnnt.mutual_information_recursion(px, py, boundary), expected, rtol=0, atol=1e-6
    )
    full = torch.tensor([[0, 0, S, T]] * B)
    torch.testing.assert_close(
        rnnt.mutual_information_recursion(px, py), naive_mi(px, py, full), rtol=0, atol=1e-6
    )


def test_mutual_information_gradcheck_and_occupations():
    gen = torch.Generator().manual_seed(4)
    B, S, T = 3, 3, 4
    px = torch.randn(B, S, T + 1, generator=gen, dtype=F64, requires_grad=True)
    py = torch.randn(B, S + 1, T, generator=gen, dtype=F64, requires_grad=True)
    boundary = torch.tensor([[0, 0, 3, 4], [1, 1, 2, 3], [0, 2, 1, 4]])
    assert torch.autograd.gradcheck(
        lambda a, b: rnnt.mutual_information_recursion(a, b, boundary), (px, py)
    )
    scores, (px_grad, py_grad) = rnnt.mutual_information_recursion(
        px, py, boundary, return_grad=True
    )
    g_px, g_py = torch.autograd.grad(scores.sum(), (px, py))
    torch.testing.assert_close(px_grad, g_px)
    torch.testing.assert_close(py_grad, g_py)
    lengths = boundary[:, 2:] - boundary[:, :2]  # symbols / frames actually traversed
    torch.testing.assert_close(px_grad.sum((1, 2)), lengths[:, 0].to(F64))
    torch.testing.assert_close(py_grad.sum((1, 2)), lengths[:, 1].to(F64))
    with torch.no_grad():
        torch.testing.assert_close(rnnt.mutual_information_recursion(px, py, boundary), scores)


def test_unreachable_cells_give_no_nan():
    B, S, T = 2, 3, 4
    px = torch.randn(B, S, T + 1, dtype=F64)
    py = torch.randn(B, S + 1, T, dtype=F64)
    px[0] = -math.inf  # sequence 0 cannot emit: its end (S, T) is unreachable
    px[1, 1, :2] = -math.inf  # sequence 1: some transitions impossible, end reachable
    px.requires_grad_(True)
    py.requires_grad_(True)
    scores = rnnt.mutual_information_recursion(px, py)
    assert scores[0] == -math.inf and torch.isfinite(scores[1])
    scores[1].backward()
    assert torch.isfinite(px.grad).all() and torch.isfinite(py.grad).all()
    assert px.grad[1, 1, :2].abs().max() == 0 and px.grad[0].abs().max() == 0


# ----------------------------------------------------------------------- losses


def test_rnnt_loss_matches_naive():
    symbols, boundary, logits, _, _ = random_problem(B=4, S=5, T=7, V=6, seed=5)
    loss = rnnt.rnnt_loss(logits, symbols, BLANK, boundary=boundary, reduction="none")
    expected = naive_rnnt_nll(logits, symbols, boundary)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    full = torch.tensor([[0, 0, 5, 7]] * 4)
    torch.testing.assert_close(
        rnnt.rnnt_loss(logits, symbols, BLANK, reduction="none"),
        naive_rnnt_nll(logits, symbols, full),
        rtol=0,
        atol=1e-6,
    )


def test_simple_loss_equals_full_loss_of_additive_joiner():
    symbols, boundary, _, lm, am = random_problem(seed=6)
    logits = am.unsqueeze(2) + lm.unsqueeze(1)  # (B, T, S+1, V)
    full = rnnt.rnnt_loss(logits, symbols, BLANK, boundary=boundary, reduction="none")
    simple = rnnt.rnnt_loss_simple(lm, am, symbols, BLANK, boundary=boundary, reduction="none")
    torch.testing.assert_close(simple, full, rtol=0, atol=1e-9)
    smoothed = rnnt.rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.0, 0.0, boundary=boundary, reduction="none"
    )
    torch.testing.assert_close(smoothed, full, rtol=0, atol=1e-9)


def test_smoothed_loss_interpolation():
    """Pure LM-only / AM-only scales reproduce the k2 formulas computed independently."""
    symbols, _, _, lm, am = random_problem(B=2, S=3, T=4, seed=7)
    B, S, T = 2, 3, 4
    lm_lp = lm.log_softmax(-1)
    # LM only: log_softmax(lm) at the symbol (px) and at blank (py), for every frame.
    px, py = rnnt.get_rnnt_logprobs_smoothed(lm, am, symbols, BLANK, 1.0, 0.0)
    torch.testing.assert_close(
        px[:, :, :T], lm_lp[:, :S].gather(2, symbols.unsqueeze(2)).expand(B, S, T)
    )
    torch.testing.assert_close(py, lm_lp[:, :, BLANK : BLANK + 1].expand(B, S + 1, T))
    assert (px[:, :, T] == -math.inf).all()
    # AM only: am combined with the unigram (mean of softmax(lm)) and renormalised.
    unigram = lm.softmax(-1).mean((0, 1))
    am_uni = (am + unigram.log()).log_softmax(-1)  # (B, T, V)
    px, py = rnnt.get_rnnt_logprobs_smoothed(lm, am, symbols, BLANK, 0.0, 1.0)
    torch.testing.assert_close(
        px[:, :, :T], am_uni.gather(2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)
    )
    torch.testing.assert_close(py, am_uni[:, :, BLANK].unsqueeze(1).expand(B, S + 1, T))


def test_padding_does_not_leak():
    symbols, boundary, logits, lm, am = random_problem(B=3, S=5, T=6, seed=8)
    s_end, t_end = boundary[:, 2], boundary[:, 3]
    pad_t = torch.arange(6)[None, :] >= t_end[:, None]  # (B, T)
    pad_s = torch.arange(6)[None, :] > s_end[:, None]  # (B, S+1)
    assert pad_t.any() and pad_s.any()
    junk = 50 * torch.randn(3, 6, 6, 5, dtype=F64)
    pad_ts = (pad_t[:, :, None] | pad_s[:, None, :]).unsqueeze(-1)
    logits2 = torch.where(pad_ts, junk, logits).requires_grad_(True)
    lm2 = torch.where(pad_s.unsqueeze(-1), junk[:, 0], lm).requires_grad_(True)
    am2 = torch.where(pad_t.unsqueeze(-1), junk[:, :, 0], am).requires_grad_(True)
    symbols2 = torch.where(pad_s[:, 1:], 3, symbols)

    kw = dict(boundary=boundary, reduction="none")
    full = rnnt.rnnt_loss(logits2, symbols2, BLANK, **kw)
    torch.testing.assert_close(full, rnnt.rnnt_loss(logits, symbols, BLANK, **kw))
    (g,) = torch.autograd.grad(full.sum(), logits2)
    assert g.masked_select(pad_ts).abs().max() == 0
    for fn in (rnnt.rnnt_loss_simple, rnnt.rnnt_loss_smoothed):
        padded = fn(lm2, am2, symbols2, BLANK, **kw)
        torch.testing.assert_close(padded, fn(lm, am, symbols, BLANK, **kw))
        g_lm, g_am = torch.autograd.grad(padded.sum(), (lm2, am2))
        assert g_lm.masked_select(pad_s.unsqueeze(-1)).abs().max() < 1e-12
        assert g_am.masked_select(pad_t.unsqueeze(-1)).abs().max() < 1e-12


def test_loss_gradchecks():
    symbols, _, logits, lm, am = random_problem(B=2, S=3, T=4, V=4, seed=9)
    boundary = torch.tensor([[0, 0, 3, 4], [0, 0, 2, 3]])
    logits.requires_grad_(True)
    lm.requires_grad_(True)
    am.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: rnnt.rnnt_loss(x, symbols, BLANK, boundary=boundary, reduction="sum"),
        (logits,),
    )
    assert torch.autograd.gradcheck(
        lambda a, b: rnnt.rnnt_loss_simple(a, b, symbols, BLANK, boundary=boundary), (lm, am)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: rnnt.rnnt_loss_smoothed(
            a, b, symbols, BLANK, 0.2, 0.3, boundary=boundary, reduction="sum"
        ),
        (lm, am),
    )
    ranges = prune_ranges_for(lm.detach(), am.detach(), symbols, boundary, 2)
    pruned = torch.randn(2, 4, 2, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: rnnt.rnnt_loss_pruned(x, symbols, ranges, BLANK, boundary=boundary), (pruned,)
    )


@pytest.mark.parametrize(
    "fn", ["rnnt_loss", "rnnt_loss_simple", "rnnt_loss_smoothed", "rnnt_loss_pruned"]
)
def test_reductions(fn):
    symbols, boundary, logits, lm, am = random_problem(B=4, S=3, T=5, seed=10)
    if fn == "rnnt_loss":
        args = (logits, symbols, BLANK)
    elif fn == "rnnt_loss_pruned":
        ranges = prune_ranges_for(lm, am, symbols, boundary, 3)
        args = (logits[:, :, :3], symbols, ranges, BLANK)
    else:
        args = (lm, am, symbols, BLANK)
    f = getattr(rnnt, fn)
    none = f(*args, boundary=boundary, reduction="none")
    assert none.shape == (4,) and torch.isfinite(none).all() and (none > 0).all()
    torch.testing.assert_close(f(*args, boundary=boundary, reduction="sum"), none.sum())
    torch.testing.assert_close(f(*args, boundary=boundary, reduction="mean"), none.mean())
    torch.testing.assert_close(f(*args, boundary=boundary), none.mean())  # default: mean
    with pytest.raises(ValueError):
        f(*args, boundary=boundary, reduction="max")


def test_float32_close_to_float64():
    symbols, boundary, logits, lm, am = random_problem(B=4, S=12, T=30, V=20, seed=11)
    for fn, args in (
        (rnnt.rnnt_loss, (logits,)),
        (rnnt.rnnt_loss_simple, (lm, am)),
        (rnnt.rnnt_loss_smoothed, (lm, am)),
    ):
        ref = fn(
            *args, symbols=symbols, termination_symbol=BLANK, boundary=boundary, reduction="none"
        )
        args32 = tuple(a.float() for a in args)
        out = fn(
            *args32, symbols=symbols, termination_symbol=BLANK, boundary=boundary, reduction="none"
        )
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------- pruning


class TinyJoiner(torch.nn.Module):
    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.inner = torch.nn.Linear(dim, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, am: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inner(am + lm)))


@pytest.mark.parametrize("s_range", [6, 9, 2, 3])
def test_pruned_loss_vs_full_loss(s_range):
    B, S, T, V, D = 3, 5, 8, 7, 6
    torch.manual_seed(12)
    joiner = TinyJoiner(D, V).double()
    symbols, boundary, _, lm_v, am_v = random_problem(B, S, T, V, seed=12)
    enc = torch.randn(B, T, D, dtype=F64, requires_grad=True)
    dec = torch.randn(B, S + 1, D, dtype=F64, requires_grad=True)

    full = rnnt.rnnt_loss(
        joiner(enc.unsqueeze(2), dec.unsqueeze(1)), symbols, BLANK, boundary, "none"
    )
    g_full = torch.autograd.grad(full.sum(), (enc, dec))

    ranges = prune_ranges_for(lm_v, am_v, symbols, boundary, s_range)
    assert ranges.shape == (B, T, min(s_range, S + 1))
    am_p, lm_p = rnnt.do_rnnt_pruning(enc, dec, ranges)
    torch.testing.assert_close(lm_p, dec[torch.arange(B)[:, None, None], ranges])
    pruned = rnnt.rnnt_loss_pruned(joiner(am_p, lm_p), symbols, ranges, BLANK, boundary, "none")
    assert torch.isfinite(pruned).all()
    if s_range >= S + 1:  # no pruning at all
        torch.testing.assert_close(pruned, full, rtol=0, atol=1e-9)
        for a, b in zip(torch.autograd.grad(pruned.sum(), (enc, dec)), g_full):
            torch.testing.assert_close(a, b)
    else:  # a subset of the paths: strictly smaller likelihood for long sequences
        assert (pruned >= full - 1e-9).all()
        assert (pruned > full + 1e-6)[boundary[:, 2] >= s_range].all()


def check_ranges(ranges, boundary, s_range):
    start = ranges[:, :, 0]
    torch.testing.assert_close(ranges - start.unsqueeze(2), torch.arange(s_range).expand_as(ranges))
    assert (start[:, 0] == 0).all()
    steps = start[:, 1:] - start[:, :-1]
    assert (steps >= 0).all() and (steps <= s_range - 1).all()
    for b, (_, _, s_end, t_end) in enumerate(boundary.tolist()):
        assert start[b].max() <= max(s_end - s_range + 1, 0)
        assert start[b, t_end - 1] + s_range - 1 >= s_end  # the end is inside the band


def test_prune_ranges_properties():
    B, S, T = 6, 20, 12
    gen = torch.Generator().manual_seed(13)
    symbols = torch.randint(1, 9, (B, S), generator=gen)
    lm = torch.randn(B, S + 1, 9, generator=gen, dtype=F64)
    am = torch.randn(B, T, 9, generator=gen, dtype=F64)
    boundary = torch.tensor(
        [[0, 0, 20, 12], [0, 0, 3, 12], [0, 0, 0, 5], [0, 0, 11, 4], [0, 0, 7, 7], [0, 0, 1, 1]]
    )
    for s_range in (4, 5, 8, 30):
        ranges = prune_ranges_for(lm, am, symbols, boundary, s_range)
        R = min(s_range, S + 1)
        assert ranges.dtype == torch.int64 and ranges.shape == (B, T, R)
        check_ranges(ranges, boundary, R)
        logits = torch.randn(B, T, R, 9, generator=gen, dtype=F64)
        loss = rnnt.rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, "none")
        assert torch.isfinite(loss).all()  # a complete path always survives


def test_prune_ranges_follow_the_alignment():
    """With occupations of one hard path, every cell of the path lies in its frame's band."""
    S, T, s_range = 9, 8, 3
    emits = [0, 2, 1, 0, 2, 2, 0, 2]  # symbols emitted on each frame (<= s_range - 1)
    assert sum(emits) == S
    px_grad = torch.zeros(1, S, T + 1, dtype=F64)
    py_grad = torch.zeros(1, S + 1, T, dtype=F64)
    path, s = [], 0
    for t, n in enumerate(emits):
        for _ in range(n):
            px_grad[0, s, t] = 1
            path.append((s, t))
            s += 1
        py_grad[0, s, t] = 1
        path.append((s, t))
    boundary = torch.tensor([[0, 0, S, T]])
    ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    check_ranges(ranges, boundary, s_range)
    for s, t in path:
        assert s in ranges[0, t].tolist(), (s, t, ranges[0, t])


def _hand_occupations(S, T, cells):
    px_grad = torch.zeros(1, S, T + 1, dtype=F64)
    py_grad = torch.zeros(1, S + 1, T, dtype=F64)
    for kind, s, t, value in cells:
        (px_grad if kind == "x" else py_grad)[0, s, t] = value
    return px_grad, py_grad


@pytest.mark.parametrize(
    "S,cells,expected",
    [
        # frame 1: nodes s=0,1,2 (px) outweigh the blank at s=3, so the window starts at 0
        # (k2 ranks windows by node occupation px_grad + py_grad, not by py_grad alone)
        (
            6,
            [
                ("x", 0, 1, 1.0),
                ("x", 1, 1, 1.0),
                ("x", 2, 1, 1.0),
                ("y", 3, 1, 0.6),
                ("y", 4, 2, 1.0),
            ],
            [0, 0, 2, 4],
        ),
        # argmax starts 3, 0 on frames 1, 2 are made monotone, then reachable
        (5, [("y", 5, 1, 1.0), ("y", 0, 2, 1.0)], [0, 0, 1, 3]),
    ],
)
def test_prune_ranges_hand_worked(S, cells, expected):
    T, s_range = 4, 3
    px_grad, py_grad = _hand_occupations(S, T, cells)
    ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, torch.tensor([[0, 0, S, T]]), s_range)
    assert ranges[0, :, 0].tolist() == expected
    check_ranges(ranges, torch.tensor([[0, 0, S, T]]), s_range)


def test_s_range_lower_bound():
    symbols = torch.randint(1, 5, (2, 10))
    lm, am = torch.randn(2, 11, 5, dtype=F64), torch.randn(2, 3, 5, dtype=F64)
    boundary = torch.tensor([[0, 0, 10, 3], [0, 0, 2, 3]])  # 10 symbols in 3 frames
    with pytest.raises(ValueError, match="s_range"):
        prune_ranges_for(lm, am, symbols, boundary, 4)
    ranges = prune_ranges_for(lm, am, symbols, boundary, 5)  # (10 - 1) // 3 + 2 == 5
    loss = rnnt.rnnt_loss_pruned(torch.randn(2, 3, 5, 5), symbols, ranges, BLANK, boundary)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------- backends


def test_k2_backend_falls_back_without_k2(monkeypatch):
    symbols, boundary, logits, _, _ = random_problem(seed=14)
    expected = rnnt.rnnt_loss(logits, symbols, BLANK, boundary)
    monkeypatch.setitem(sys.modules, "k2", None)  # makes `import k2` fail
    monkeypatch.setattr(rnnt, "_backend", "k2")
    with pytest.warns(UserWarning, match="k2"):
        out = rnnt.rnnt_loss(logits, symbols, BLANK, boundary)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError):
        rnnt.set_backend("warp")


def test_k2_backend_delegates(monkeypatch):
    calls = {}

    def fake_rnnt_loss(**kwargs):
        calls.update(kwargs)
        return torch.tensor(42.0)

    monkeypatch.setitem(sys.modules, "k2", types.SimpleNamespace(rnnt_loss=fake_rnnt_loss))
    monkeypatch.setattr(rnnt, "_backend", "torch")
    rnnt.set_backend("k2")
    assert rnnt.get_backend() == "k2"
    symbols, boundary, logits, _, _ = random_problem(seed=15)
    assert rnnt.rnnt_loss(logits, symbols, BLANK, boundary, reduction="sum") == 42.0
    assert calls["reduction"] == "sum" and calls["termination_symbol"] == BLANK


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    symbols, boundary, logits, lm, am = random_problem(B=4, S=6, T=9, seed=16)
    cpu = rnnt.rnnt_loss(logits, symbols, BLANK, boundary, "none")
    cuda = rnnt.rnnt_loss(logits.cuda(), symbols.cuda(), BLANK, boundary.cuda(), "none")
    torch.testing.assert_close(cuda.cpu(), cpu)
    ranges = prune_ranges_for(lm.cuda(), am.cuda(), symbols.cuda(), boundary.cuda(), 3)
    torch.testing.assert_close(ranges.cpu(), prune_ranges_for(lm, am, symbols, boundary, 3))
