"""Benchmark: full RNN-T loss vs the pruned path of :mod:`mvq_kd.rnnt`.

Both variants run forward + backward through a training-like joiner
(``Linear(enc 512 -> 512)`` / ``Linear(dec 512 -> 512)``, add, tanh, ``Linear(512 -> V)``):

* ``full``: joiner on all (T, S+1) pairs -> :func:`rnnt_loss`.
* ``pruned``: smoothed simple loss with occupations -> :func:`get_rnnt_prune_ranges` ->
  :func:`do_rnnt_pruning` -> joiner on (T, s_range) pairs -> :func:`rnnt_loss_pruned`.

Every (variant, device) is measured in a fresh subprocess.  Time: median of
``--repeats`` forward + backward passes after ``--warmup`` passes.  Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` during the passes, minus the memory
  allocated before them (model, inputs).
* CPU: growth of the process's peak resident set size (``getrusage`` ``ru_maxrss``)
  over its value right before the first pass.  This high-water mark is why each
  variant gets its own process; it includes allocator overhead, so it is an upper bound
  of the tensors' peak.

Before the baseline is taken, one tiny step (B=2, T=16, S=4) initialises libraries.

Usage::

    python benchmarks/bench_rnnt.py                    # CPU, and CUDA when available
    python benchmarks/bench_rnnt.py --device cuda --batch 32 --frames 500
    python benchmarks/bench_rnnt.py --threads 1        # steadier on a shared, busy CPU
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd import rnnt  # noqa: E402

BLANK = 0


class Joiner(nn.Module):
    """``output(tanh(enc_proj(enc) + dec_proj(dec)))`` as in the recipe's transducer."""

    def __init__(self, enc_dim: int, dec_dim: int, joiner_dim: int, vocab: int) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joiner_dim)
        self.dec_proj = nn.Linear(dec_dim, joiner_dim)
        self.output = nn.Linear(joiner_dim, vocab)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        """enc, dec: already projected, broadcastable (..., joiner_dim) -> (..., vocab)."""
        return self.output(torch.tanh(enc + dec))


def make_inputs(args: argparse.Namespace, device: torch.device) -> dict:
    """Encoder / decoder outputs (B, T, D) and (B, S+1, D), symbols, ragged boundary."""
    gen = torch.Generator().manual_seed(0)
    B, T, S, V = args.batch, args.frames, args.symbols, args.vocab
    t_end = torch.linspace(T, int(0.8 * T), B).round().long()  # ragged, max T
    s_end = torch.linspace(S, int(0.7 * S), B).round().long()  # ragged, max S
    boundary = torch.stack([torch.zeros(B).long(), torch.zeros(B).long(), s_end, t_end], 1)
    return dict(
        enc=torch.randn(B, T, args.enc_dim, generator=gen).to(device).requires_grad_(),
        dec=torch.randn(B, S + 1, args.dec_dim, generator=gen).to(device).requires_grad_(),
        symbols=torch.randint(1, V, (B, S), generator=gen).to(device),
        boundary=boundary.to(device),
    )


def full_step(joiner: Joiner, simple: nn.ModuleDict, x: dict, s_range: int) -> None:
    enc, dec = joiner.enc_proj(x["enc"]), joiner.dec_proj(x["dec"])
    logits = joiner(enc.unsqueeze(2), dec.unsqueeze(1))  # (B, T, S+1, V)
    loss = rnnt.rnnt_loss(logits, x["symbols"], BLANK, x["boundary"], reduction="sum")
    loss.backward()


def pruned_step(joiner: Joiner, simple: nn.ModuleDict, x: dict, s_range: int) -> None:
    lm, am = simple["lm"](x["dec"]), simple["am"](x["enc"])
    simple_loss, (px_grad, py_grad) = rnnt.rnnt_loss_smoothed(
        lm, am, x["symbols"], BLANK, 0.25, 0.0, x["boundary"], "sum", return_grad=True
    )
    ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, x["boundary"], s_range)
    am_p, lm_p = rnnt.do_rnnt_pruning(joiner.enc_proj(x["enc"]), joiner.dec_proj(x["dec"]), ranges)
    logits = joiner(am_p, lm_p)  # (B, T, s_range, V)
    pruned_loss = rnnt.rnnt_loss_pruned(logits, x["symbols"], ranges, BLANK, x["boundary"], "sum")
    (0.5 * simple_loss + pruned_loss).backward()


STEPS = {"full": full_step, "pruned": pruned_step}


def worker(args: argparse.Namespace) -> dict:
    """Measure one variant on one device (run in its own process)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    joiner = Joiner(args.enc_dim, args.dec_dim, args.joiner_dim, args.vocab).to(device)
    simple = nn.ModuleDict(
        {"am": nn.Linear(args.enc_dim, args.vocab), "lm": nn.Linear(args.dec_dim, args.vocab)}
    ).to(device)
    step = STEPS[args.worker]
    # A tiny step first, so that lazily initialised library state (kernels, allocator
    # pools, thread pools) is not attributed to the measured variant.
    tiny = argparse.Namespace(**{**vars(args), "batch": 2, "frames": 16, "symbols": 4})
    step(joiner, simple, make_inputs(tiny, device), args.s_range)
    x = make_inputs(args, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    times = []
    for i in range(args.warmup + args.repeats):
        for p in (*joiner.parameters(), *simple.parameters(), x["enc"], x["dec"]):
            p.grad = None
        sync()
        start = time.perf_counter()
        step(joiner, simple, x, args.s_range)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "variant": args.worker,
        "device": args.device,
        "time_s": statistics.median(times),
        "peak_mib": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="all", help="cpu, cuda[:i], or all (default)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250, help="T")
    parser.add_argument("--symbols", type=int, default=60, help="S")
    parser.add_argument("--vocab", type=int, default=500, help="V")
    parser.add_argument("--enc-dim", type=int, default=512)
    parser.add_argument("--dec-dim", type=int, default=512)
    parser.add_argument("--joiner-dim", type=int, default=512)
    parser.add_argument("--s-range", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--worker", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    devices = [args.device] if args.device != "all" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    print(
        f"B={args.batch} T={args.frames} S={args.symbols} V={args.vocab} "
        f"joiner={args.enc_dim}->{args.joiner_dim}->{args.vocab} s_range={args.s_range} "
        f"threads={args.threads or torch.get_num_threads()}"
    )
    print("peak memory: CPU = growth of ru_maxrss, CUDA = max_memory_allocated (see docstring)")
    print(f"{'device':8} {'variant':8} {'fwd+bwd s':>10} {'peak MiB':>10}")
    for device in devices:
        results = {}
        for variant in ("full", "pruned"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--device", device, "--worker", variant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
            r = results[variant]
            print(f"{device:8} {variant:8} {r['time_s']:10.3f} {r['peak_mib']:10.1f}")
        full, pruned = results["full"], results["pruned"]
        print(
            f"{device:8} speed-up {full['time_s'] / pruned['time_s']:.1f}x, memory ratio "
            f"{pruned['peak_mib'] / max(full['peak_mib'], 1e-9):.3f} (pruned / full)"
        )


if __name__ == "__main__":
    main()
