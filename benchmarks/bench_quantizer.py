"""Benchmark: our quantizer (:mod:`mvq_kd.quantization`) vs ``multi_quantization``.

On one set of teacher embeddings (a file written by
``local/extract_teacher_embeddings.py``, e.g. ``data/synth/mvq/embeddings.pt``; at
least 100k frames are recommended) with 10% of the frames held out, for each number of
bytes per frame, both quantizers are trained on the same 90% and the script prints:

* held-out relative reconstruction error ``sum ||x_hat - x||^2 / sum ||x - mean||^2``,
* training wall time,
* encode speed (held-out frames per second),

then the storage table: bytes on disk per teacher frame for the codebook indexes vs the
fp16 embeddings (lhotse ``NumpyHdf5Writer``, as ``prepare.sh`` stage 7 stores them),
measured by writing the held-out frames as utterances of ``--frames-per-utt`` frames.

``multi_quantization`` (``pip install --no-deps multi_quantization``) is trained as
icefall does: minibatches of 512 random training frames, ``--mq-iters`` iterations
per phase (2000 + 2000 by default).

Usage::

    python benchmarks/bench_quantizer.py --embeddings data/synth/mvq/embeddings.pt
    python benchmarks/bench_quantizer.py --embeddings e.pt --bytes 8 --skip-reference
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.quantization import QuantizerConfig, train_quantizer  # noqa: E402


def rel_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def bench_ours(train: torch.Tensor, valid: torch.Tensor, n: int, cfg: QuantizerConfig):
    t0 = time.time()
    q = train_quantizer(train, n, cfg)
    train_s = time.time() - t0
    t0 = time.time()
    idx = q.encode(valid)
    enc_s = time.time() - t0
    return rel_error(valid, q.decode(idx)), train_s, valid.size(0) / enc_s, idx


def bench_reference(train: torch.Tensor, valid: torch.Tensor, n: int, iters: int, seed: int):
    import multi_quantization

    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    trainer = multi_quantization.QuantizerTrainer(
        dim=train.size(1), bytes_per_frame=n, device=torch.device("cpu"),
        phase_one_iters=iters, phase_two_iters=iters,
    )  # fmt: skip
    while not trainer.done():
        trainer.step(train[torch.randint(0, train.size(0), (512,), generator=g)])
    q = trainer.get_quantizer()
    train_s = time.time() - t0
    with torch.no_grad():
        t0 = time.time()
        idx = q.encode(valid)
        enc_s = time.time() - t0
        err = rel_error(valid, q.decode(idx))
    return err, train_s, valid.size(0) / enc_s


def storage_per_frame(idx: np.ndarray, emb: np.ndarray, frames_per_utt: int):
    """Bytes per frame of HDF5 files holding idx (F, N) uint8 and emb (F, D) fp16."""
    from lhotse.features.io import NumpyHdf5Writer

    sizes = []
    with tempfile.TemporaryDirectory() as d:
        for name, arr in (("idx", idx), ("emb", emb)):
            path = Path(d) / f"{name}.h5"
            with NumpyHdf5Writer(path) as w:
                for i, s in enumerate(range(0, arr.shape[0], frames_per_utt)):
                    w.store_array(
                        f"utt{i}", arr[s : s + frames_per_utt], frame_shift=0.04, temporal_dim=0
                    )
            sizes.append(path.stat().st_size / arr.shape[0])
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--bytes", type=int, nargs="+", default=[8, 16], help="bytes per frame")
    p.add_argument("--mq-iters", type=int, default=2000, help="multi_quantization iters per phase")
    p.add_argument("--skip-reference", action="store_true", help="only ours")
    p.add_argument(
        "--skip-ours", action="store_true", help="only multi_quantization (no storage table)"
    )
    p.add_argument("--train-iters", type=int, default=QuantizerConfig.train_iters)
    p.add_argument("--refine-iters", type=int, default=QuantizerConfig.refine_iters)
    p.add_argument("--beam", type=int, default=QuantizerConfig.beam)
    p.add_argument("--frames-per-utt", type=int, default=250, help="storage table utterances")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.load(args.embeddings, weights_only=False)["embeddings"].float()
    x = x[torch.randperm(x.size(0), generator=torch.Generator().manual_seed(args.seed))]
    n_valid = x.size(0) // 10
    valid, train = x[:n_valid], x[n_valid:]
    print(
        f"{x.size(0)} frames of dim {x.size(1)}: {train.size(0)} train, {n_valid} held out; "
        f"{torch.get_num_threads()} threads"
    )
    cfg = QuantizerConfig(
        train_iters=args.train_iters, refine_iters=args.refine_iters, beam=args.beam, seed=args.seed
    )
    rows = []
    idx_by_n = {}
    for n in args.bytes:
        if not args.skip_ours:
            err, tr, fps, idx = bench_ours(train, valid, n, cfg)
            idx_by_n[n] = idx
            rows.append((n, "ours", err, tr, fps))
            print(
                f"  ours  {n:2d} B: held-out error {err:.4f}, train {tr:.1f} s, "
                f"encode {fps:,.0f} frames/s",
                flush=True,
            )
        if not args.skip_reference:
            err, tr, fps = bench_reference(train, valid, n, args.mq_iters, args.seed)
            rows.append((n, "multi_quantization", err, tr, fps))
            print(
                f"  multi_quantization {n:2d} B: held-out error {err:.4f}, train {tr:.1f} s, "
                f"encode {fps:,.0f} frames/s",
                flush=True,
            )
    print(
        "\n| bytes/frame | quantizer | held-out rel. error | train time (s) | encode (frames/s) |"
    )
    print("|---|---|---|---|---|")
    for n, name, err, tr, fps in rows:
        print(f"| {n} | {name} | {err:.4f} | {tr:.1f} | {fps:,.0f} |")
    if not idx_by_n:
        return
    print("\n| stored per teacher frame | bytes on disk | target |")
    print("|---|---|---|")
    emb16 = valid.half().numpy()
    for n, idx in idx_by_n.items():
        idx_b, emb_b = storage_per_frame(idx.numpy(), emb16, args.frames_per_utt)
        print(
            f"| {n} codebook indexes (uint8) | {idx_b:.2f} | {n} (within 10%: "
            f"{'yes' if idx_b <= 1.1 * n else 'no'}) |"
        )
    print(f"| fp16 embeddings (dim {x.size(1)}) | {emb_b:.2f} | {2 * x.size(1)} |")


if __name__ == "__main__":
    main()
