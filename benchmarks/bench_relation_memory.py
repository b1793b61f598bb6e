#!/usr/bin/env python3
"""Activations the attention-relation loss of layer-wise KD keeps for the backward pass.

One connection (QQ, KK and VV relations) at a LibriSpeech-like shape: the teacher's
heads (B, H, T, D / H) against the branch's features split another way. Counts the
bytes of the tensors autograd saves, with the relation maps kept (``relation_kl``) and
recomputed in backward (``relation_loss``, what training uses); checks both give the
same loss and gradient.

    python benchmarks/bench_relation_memory.py --batch 16 --frames 350
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.kd.layerwise import relation_kl, relation_loss  # noqa: E402


def saved_bytes(fn, teacher, student, lens, heads):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = sum(fn(t, s, lens, heads) for t, s in zip(teacher, student))
    grads = torch.autograd.grad(loss, student)
    return sum(storages.values()), loss.detach(), grads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=350, help="40 ms frames per utterance")
    p.add_argument("--dim", type=int, default=512, help="the teacher's width")
    p.add_argument("--teacher-heads", type=int, default=8)
    p.add_argument("--branch-heads", type=int, default=4)
    args = p.parse_args()
    torch.manual_seed(0)
    b, t, d, h = args.batch, args.frames, args.dim, args.teacher_heads
    lens = torch.full((b,), t)
    teacher = [torch.randn(b, h, t, d // h) for _ in range(3)]
    hs = args.branch_heads
    student = [torch.randn(b, hs, t, d // hs, requires_grad=True) for _ in range(3)]
    kept, loss_a, grads_a = saved_bytes(relation_kl, teacher, student, lens, h)
    recomputed, loss_b, grads_b = saved_bytes(relation_loss, teacher, student, lens, h)
    torch.testing.assert_close(loss_a, loss_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb)
    one_map = b * h * t * t * 4
    print(f"B={b}, T={t}, {h} teacher heads; one (B, H, T, T) map: {one_map / 2**20:.0f} MiB")
    print(f"saved for backward, maps kept:       {kept / 2**20:8.0f} MiB")
    print(f"saved for backward, maps recomputed: {recomputed / 2**20:8.0f} MiB (the inputs)")


if __name__ == "__main__":
    main()
