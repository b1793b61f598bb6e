"""Benchmark: our quantizer (:mod:`mvq_kd.quantization`) against ``multi_quantization``.

For every embedding family and number of bytes per frame both quantizers are trained on
the family's training frames and measured on its held-out frames:

* held-out relative reconstruction error ``sum ||x_hat - x||^2 / sum ||x - mean||^2``,
* training wall time,
* encoding speed (held-out frames per second).

Families are the files of ``embedding_families.py`` (``--families-dir``, ``--families``;
train / held-out frames given) or embedding files of ``local/extract_teacher_embeddings.py``
(``--embeddings``; 10% of the frames held out at random, and the storage table: bytes on
disk per teacher frame for the indexes vs fp16 embeddings in lhotse HDF5 files).

``multi_quantization`` (``pip install --no-deps multi_quantization``) is trained as
icefall does: minibatches of 512 random training frames, ``--mq-iters`` iterations per
phase. Its runs take hours at large dims, so every row is appended to ``--results``
(JSON lines) as soon as it is measured, and a reference row already there for the same
family, bytes, iterations, threads and seed is reused instead of re-run (``--rerun``).
``--table`` prints the markdown table of a results file.

Usage::

    python benchmarks/embedding_families.py --out-dir /tmp/families ...
    python benchmarks/bench_quantizer.py --families-dir /tmp/families \\
        --families anisotropic heavy-tailed --bytes 8 16 --threads 1 \\
        --results benchmarks/quantizer-results.jsonl
    python benchmarks/bench_quantizer.py --table benchmarks/quantizer-results.jsonl
    python benchmarks/bench_quantizer.py --embeddings data/synth/mvq/embeddings.pt --bytes 8
"""

import argparse
import datetime
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.quantization import QuantizerConfig, train_quantizer  # noqa: E402

REFERENCE = "multi_quantization"


def rel_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ours(train: torch.Tensor, valid: torch.Tensor, n: int, cfg: QuantizerConfig):
    t0 = time.time()
    q = train_quantizer(train, n, cfg)
    _sync(train.device)
    train_s = time.time() - t0
    t0 = time.time()
    idx = q.encode(valid)
    _sync(train.device)
    enc_s = time.time() - t0
    return rel_error(valid, q.decode(idx)), train_s, valid.size(0) / enc_s, idx.cpu()


def bench_reference(train: torch.Tensor, valid: torch.Tensor, n: int, iters: int, seed: int):
    import multi_quantization

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t0 = time.time()
    trainer = multi_quantization.QuantizerTrainer(
        dim=train.size(1), bytes_per_frame=n, device=train.device,
        phase_one_iters=iters, phase_two_iters=iters,
    )  # fmt: skip
    while not trainer.done():
        trainer.step(train[torch.randint(0, train.size(0), (512,), generator=g).to(train.device)])
    q = trainer.get_quantizer()
    _sync(train.device)
    train_s = time.time() - t0
    with torch.no_grad():
        t0 = time.time()
        idx = q.encode(valid)
        _sync(train.device)
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


def families(args) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, train (F, D), held-out (F', D)) of every family asked for."""
    for path in args.embeddings or []:
        x = torch.load(path, weights_only=False)["embeddings"].float()
        x = x[torch.randperm(x.size(0), generator=torch.Generator().manual_seed(args.seed))]
        n_valid = x.size(0) // 10
        yield path.stem, x[n_valid:], x[:n_valid]
    for name in args.families or []:
        path = args.families_dir / f"{name}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"No family file {path}: run benchmarks/embedding_families.py")
        d = torch.load(path, weights_only=True)
        yield name, d["train"].float(), d["valid"].float()


def read_rows(path: Optional[Path]) -> List[Dict]:
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_table(rows: List[Dict]) -> str:
    out = [
        "| family | dim | bytes | quantizer | held-out rel. error | train (s) | encode (frames/s) "
        "| threads | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = {}
    for r in rows:  # the newest row of each (family, bytes, quantizer) wins
        key[(r["family"], r["bytes"], r["quantizer"])] = r
    order = sorted(key.values(), key=lambda r: (r["family"], r["bytes"], r["quantizer"] != "ours"))
    for r in order:
        out.append(
            f"| {r['family']} | {r['dim']} | {r['bytes']} | {r['quantizer']} | "
            f"{r['heldout_error']:.4f} | {r['train_s']:,.0f} | {r['encode_fps']:,.0f} | "
            f"{r['threads']} | {r['date']} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--embeddings", type=Path, nargs="*", help="embedding files (10%% held out)")
    p.add_argument("--families-dir", type=Path, default=Path("/tmp/families"))
    p.add_argument("--families", nargs="*", help="family names (files in --families-dir)")
    p.add_argument("--bytes", type=int, nargs="+", default=[8, 16], help="bytes per frame")
    p.add_argument("--mq-iters", type=int, default=1000, help="multi_quantization iters per phase")
    p.add_argument("--only", choices=("ours", REFERENCE), help="run one quantizer only")
    p.add_argument("--results", type=Path, help="JSON lines file the rows are appended to")
    p.add_argument("--rerun", action="store_true", help="re-run reference rows already there")
    p.add_argument("--table", type=Path, help="print the table of this results file and exit")
    p.add_argument("--frames-per-utt", type=int, default=250, help="storage table utterances")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both quantizers run there)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.table:
        print(format_table(read_rows(args.table)))
        return
    if not args.embeddings and not args.families:
        p.error("give --embeddings or --families")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    done = read_rows(args.results)
    rows: List[Dict] = []
    device = torch.device(args.device)
    for name, train, valid in families(args):
        train, valid = train.to(device), valid.to(device)
        print(f"{name}: dim {train.size(1)}, {train.size(0)} train and {valid.size(0)} held-out "
              f"frames; {threads} threads", flush=True)  # fmt: skip
        idx_by_n = {}
        for n in args.bytes:
            for quantizer in ("ours", REFERENCE):
                if args.only and quantizer != args.only:
                    continue
                row = {"family": name, "dim": train.size(1), "bytes": n, "quantizer": quantizer,
                       "threads": threads, "seed": args.seed}  # fmt: skip
                if device.type != "cpu":
                    row["device"] = torch.cuda.get_device_name(device)
                if quantizer == "ours":
                    err, tr, fps, idx_by_n[n] = bench_ours(
                        train, valid, n, QuantizerConfig(seed=args.seed)
                    )
                else:
                    row["mq_iters"] = args.mq_iters
                    same = [r for r in done if all(r.get(k) == v for k, v in row.items())]
                    if same and not args.rerun:
                        print(f"  {REFERENCE} {n:2d} B: measured {same[-1]['date']}, reused")
                        rows.append(same[-1])
                        continue
                    err, tr, fps = bench_reference(train, valid, n, args.mq_iters, args.seed)
                today = datetime.date.today().isoformat()
                row.update(heldout_error=err, train_s=tr, encode_fps=fps, date=today,
                           machine=platform.machine())  # fmt: skip
                rows.append(row)
                print(f"  {quantizer} {n:2d} B: held-out error {err:.4f}, train {tr:.1f} s, "
                      f"encode {fps:,.0f} frames/s", flush=True)  # fmt: skip
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
        if args.embeddings and idx_by_n and name in {p.stem for p in args.embeddings}:
            print("\n| stored per teacher frame | bytes on disk | target |\n|---|---|---|")
            emb16 = valid.half().cpu().numpy()
            for n, idx in idx_by_n.items():
                idx_b, emb_b = storage_per_frame(idx.numpy(), emb16, args.frames_per_utt)
                ok = "yes" if idx_b <= 1.1 * n else "no"
                print(f"| {n} codebook indexes (uint8) | {idx_b:.2f} | {n} (within 10%: {ok}) |")
            dim = train.size(1)
            print(f"| fp16 embeddings (dim {dim}) | {emb_b:.2f} | {2 * dim} |\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
