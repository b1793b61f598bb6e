"""Benchmark: training step time of the KD variants, and the storage of frame-level KD.

On the same training batches (noise-mixed as in training, loaded once), times the
trainer's full update (:meth:`mvq_kd.trainer.Trainer.train_step`: targets, forward,
backward, clipping, optimizer step) of

* ``baseline``: the transducer alone,
* ``MVQ-KD``: + codebook-index prediction from the stored indexes,
* ``L2 stored``: + L2 regression of the stored fp16 teacher embeddings,
* ``L2 teacher``: + L2 regression of embeddings of the teacher run on every batch,
* ``layer-wise``: + layer-wise KD (two auxiliary branches, feature + attention + APC
  losses) from the teacher run on every batch,

and, separately, the time to load and collate a batch with each variant's fields
(dataset ``__getitem__``). Variants run interleaved, batch after batch, so that machine
load drifts affect all alike. Then the storage on disk per hour of training audio of
the indexes and of the fp16 embeddings (each written alone to an HDF5 file, as stage 7
does).

    python benchmarks/bench_kd_step.py --mvq-dir data/synth/mvq \\
        --teacher-model egs/synth/exp/teacher --teacher-epoch 10 --teacher-avg 3 \\
        --teacher-layer 4 [--variants baseline layer-wise]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.config import OptimConfig, TrainConfig  # noqa: E402
from mvq_kd.dataset import DataConfig, load_cuts, make_sampler, train_dataset  # noqa: E402
from mvq_kd.fields import EMBEDDING_FIELD, INDEX_FIELD  # noqa: E402
from mvq_kd.kd.frame import FrameKdConfig  # noqa: E402
from mvq_kd.kd.layerwise import LayerwiseKdConfig  # noqa: E402
from mvq_kd.model.encoder import EncoderConfig  # noqa: E402
from mvq_kd.model.transducer import TransducerConfig  # noqa: E402
from mvq_kd.teacher import TeacherSpec  # noqa: E402
from mvq_kd.trainer import Trainer  # noqa: E402

NO_LAYERWISE = LayerwiseKdConfig()
VARIANTS = {
    "baseline": (FrameKdConfig(), NO_LAYERWISE),
    "MVQ-KD": (FrameKdConfig(codebook_loss_scale=0.1), NO_LAYERWISE),
    "L2 stored": (FrameKdConfig(embedding_loss="l2"), NO_LAYERWISE),
    "L2 teacher": (FrameKdConfig(embedding_loss="l2", embedding_source="teacher"), NO_LAYERWISE),
    "layer-wise": (
        FrameKdConfig(),
        LayerwiseKdConfig(
            num_connections=2, feature_loss_scale=1, attention_loss_scale=0.1, apc_loss_scale=1
        ),
    ),
}


def storage_per_hour(manifest: Path) -> dict:
    """Bytes on disk per hour of audio of each stored field, each in its own HDF5 file."""
    from lhotse import load_manifest_lazy
    from lhotse.features.io import NumpyHdf5Writer

    cuts = list(load_manifest_lazy(manifest))
    hours = sum(c.duration for c in cuts) / 3600
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for field in (INDEX_FIELD, EMBEDDING_FIELD):
            path = Path(d) / f"{field}.h5"
            with NumpyHdf5Writer(path) as w:
                for c in cuts:
                    w.store_array(c.id, c.load_custom(field), frame_shift=0.04, temporal_dim=0)
            sizes[field] = path.stat().st_size / hours
    return {"hours": hours, **sizes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mvq-dir", type=Path, default=Path("data/synth/mvq"))
    p.add_argument("--manifest-dir", type=Path, default=Path("data/synth/fbank"))
    p.add_argument("--prefix", default="synth")
    p.add_argument("--bpe-model", type=Path, default=Path("data/synth/lang_bpe_64/bpe.model"))
    p.add_argument("--teacher-model", required=True, help="train.py experiment folder")
    p.add_argument("--teacher-epoch", type=int, required=True)
    p.add_argument("--teacher-avg", type=int, default=1)
    p.add_argument("--teacher-layer", type=int, required=True)
    p.add_argument("--num-batches", type=int, default=40, help="timed batches")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    p.add_argument("--max-duration", type=float, default=20.0, help="seconds per batch")
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="NAME",
        help=f"variants to time (default: all of {list(VARIANTS)}; baseline is always timed)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    train_cuts = args.mvq_dir / f"{args.prefix}_cuts_train.jsonl.gz"
    data = DataConfig(
        train_cuts=[train_cuts],
        valid_cuts=[args.manifest_dir / f"{args.prefix}_cuts_dev.jsonl.gz"],
        max_duration=args.max_duration,
        spec_augment=False,
        musan_cuts=args.manifest_dir / "noise_cuts_all.jsonl.gz",
        num_workers=0,
    )
    encoder = EncoderConfig(
        num_layers=4, d_model=128, num_heads=4, ffn_dim=512, causal=args.streaming,
        chunk_size=4, left_context=16,
    )  # fmt: skip
    vocab = spm.SentencePieceProcessor(model_file=str(args.bpe_model)).vocab_size()
    model = TransducerConfig(encoder, vocab_size=vocab, decoder_dim=256, joiner_dim=256)
    teacher = TeacherSpec(
        "conformer", args.teacher_model, args.teacher_layer, args.teacher_epoch, args.teacher_avg
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_kd_"))
    trainers = {}
    for name in ["baseline"] + [v for v in args.variants if v != "baseline"]:
        kd, layerwise = VARIANTS[name]
        cfg = TrainConfig(
            exp_dir=tmp / name.replace(" ", "-"),
            bpe_model=args.bpe_model,
            model=model,
            data=data,
            optim=OptimConfig(warmup_batches=200),
            frame_kd=kd,
            layerwise_kd=layerwise,
            teacher=teacher if kd.runs_teacher or layerwise.enabled else None,
            device="cpu",
        )
        trainers[name] = Trainer(cfg)

    # One set of batches for all: the cuts of the first sampler batches, noise-mixed
    # once; each variant's dataset then collates its own fields from the same cuts.
    sampler = make_sampler(load_cuts(data.train_cuts), data, shuffle=True)
    sampler.set_epoch(1)
    n = args.warmup + args.num_batches
    cut_batches = [c for _, c in zip(range(n), sampler)]
    random.seed(0)
    mixer = train_dataset(data).cut_transforms[0]
    cut_batches = [mixer(cuts) for cuts in cut_batches]
    datasets = {
        name: train_dataset(
            DataConfig(**{**vars(data), "musan_cuts": None}),
            t.cfg.frame_kd.cut_fields(),
            t.teacher.input_type if t.teacher is not None else None,
        )
        for name, t in trainers.items()
    }
    step_s = {k: [] for k in trainers}
    load_s = {k: [] for k in trainers}
    for i, cuts in enumerate(cut_batches):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            batch = datasets[name][cuts]
            t1 = time.perf_counter()
            trainer.train_step(batch)
            t2 = time.perf_counter()
            if i >= args.warmup:
                load_s[name].append(t1 - t0)
                step_s[name].append(t2 - t1)
        print(f"batch {i + 1}/{n}", end="\r", file=sys.stderr, flush=True)

    base = statistics.mean(step_s["baseline"])
    print(
        f"\n{args.num_batches} batches of <= {args.max_duration:.0f} s "
        f"({'streaming' if args.streaming else 'non-streaming'} 4 x 128 student, "
        f"{torch.get_num_threads()} threads, CPU)\n"
    )
    print("| variant | step time (s) | ratio to baseline | batch loading (s) |")
    print("|---|---|---|---|")
    for name in trainers:
        step = statistics.mean(step_s[name])
        load = statistics.mean(load_s[name])
        print(f"| {name} | {step:.3f} | {step / base:.3f} | {load:.3f} |")
    st = storage_per_hour(train_cuts)
    print(f"\nStorage per hour of audio ({st['hours']:.2f} h of training cuts):\n")
    print("| stored | MB per hour |")
    print("|---|---|")
    print(f"| codebook indexes (uint8) | {st[INDEX_FIELD] / 1e6:.2f} |")
    print(f"| fp16 embeddings | {st[EMBEDDING_FIELD] / 1e6:.2f} |")
    print(f"| ratio | {st[EMBEDDING_FIELD] / st[INDEX_FIELD]:.1f}x |")


if __name__ == "__main__":
    main()
