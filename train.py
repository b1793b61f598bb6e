#!/usr/bin/env python3
r"""Train a Conformer transducer (teacher or student) with the pruned RNN-T loss.

Single process:
    ./train.py --exp-dir egs/synth/exp/teacher --manifest-dir data/synth/fbank \
        --bpe-model data/synth/lang_bpe_64/bpe.model --num-epochs 10
Several GPUs / nodes (DDP):
    torchrun --nproc-per-node 4 train.py ...
Resume: --start-epoch N (from epoch-(N-1).pt) or --start-batch B (from checkpoint-B.pt,
continuing mid-epoch with exactly the next batch).

Frame-level distillation (train on the manifests of prepare.sh stage 7):
    MVQ-KD:            --train-manifest-dir data/synth/mvq --codebook-loss-scale 0.1
    stored L2 (paper's baseline; stage 7 with --store-embeddings true):
                       --train-manifest-dir data/synth/mvq --embedding-loss l2
    on-the-fly L2:     --embedding-loss l2 --embedding-source teacher \
                       --teacher-model egs/synth/exp/teacher --teacher-epoch 10 \
                       --teacher-avg 3 --teacher-layer 4
Layer-wise KD into a streaming student (a non-streaming Conformer teacher on the fly):
    --causal true --feature-loss-scale 1 --attention-loss-scale 0.1 --apc-loss-scale 1 \
    --teacher-model egs/synth/exp/teacher --teacher-epoch 10 --teacher-avg 3 \
    [--unlabeled-parts train-unlabeled --unlabeled-ratio 1]
Sequence-level KD (train on the teacher's N-best of prepare.sh stage 8):
    --train-manifest-dir data/synth/nbest --pseudo-labels nbest --nbest-weighting scores \
    [--ground-truth-weight 0.5] [--unlabeled-parts train-unlabeled]
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from mvq_kd.cli import add_config_args, config_from_args, make_parser
from mvq_kd.config import OptimConfig, TrainConfig
from mvq_kd.dataset import DataConfig, add_manifest_args
from mvq_kd.fields import cuts_path
from mvq_kd.kd.frame import FrameKdConfig
from mvq_kd.kd.layerwise import LayerwiseKdConfig
from mvq_kd.kd.sequence import SequenceKdConfig
from mvq_kd.loss import LossConfig
from mvq_kd.model.encoder import EncoderConfig
from mvq_kd.model.transducer import TransducerConfig
from mvq_kd.teacher import TeacherSpec
from mvq_kd.trainer import run
from mvq_kd.utils import setup_logging


def get_parser() -> argparse.ArgumentParser:
    """The options of train.py: those of the configs (declared with their help and
    default in the dataclasses) and the cut manifests, which name the configs' paths."""
    p = make_parser(__doc__)
    add_config_args(p, TrainConfig, "training")
    m = p.add_argument_group("cut manifests: <dir>/<prefix>_cuts_<part>.jsonl.gz")
    add_manifest_args(m)
    m.add_argument(
        "--train-manifest-dir",
        type=Path,
        default=None,
        help="training (and unlabeled) cuts from here instead of --manifest-dir (e.g. "
        "data/synth/mvq: the cuts with codebook indexes of prepare.sh stage 7)",
    )
    m.add_argument("--train-parts", nargs="+", default=["train"], help="training parts")
    m.add_argument("--valid-parts", nargs="+", default=["dev"], help="validation parts")
    m.add_argument(
        "--unlabeled-parts",
        nargs="*",
        default=[],
        help="cut parts without transcripts (e.g. train-unlabeled), read from the folder of the "
        "training cuts: pseudo labels and distillation losses only",
    )
    add_config_args(p, DataConfig, "batches and augmentation")
    add_config_args(p, EncoderConfig, "model: encoder")
    add_config_args(p, TransducerConfig, "model: decoder and joiner")
    add_config_args(p, OptimConfig, "optimization")
    add_config_args(p, LossConfig, "loss")
    k = add_config_args(p, FrameKdConfig, "frame-level distillation (MVQ-KD, L1/L2)")
    k.add_argument(
        "--quantizer",
        type=Path,
        default=None,
        help="quantizer.pt of prepare.sh stage 6: the training cuts' indexes must be its",
    )
    add_config_args(
        p, LayerwiseKdConfig, "layer-wise distillation (auxiliary non-streaming layers)"
    )
    add_config_args(p, SequenceKdConfig, "sequence-level distillation (teacher N-best)")
    add_config_args(
        p, TeacherSpec, "teacher run on the fly (layer-wise KD, --embedding-source teacher)"
    )
    return p


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options; exits on inconsistent options."""
    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_file=str(args.bpe_model)).vocab_size()
    model = config_from_args(
        TransducerConfig,
        args,
        encoder=config_from_args(EncoderConfig, args),
        vocab_size=vocab_size,
        ctc_head=args.ctc_loss_scale > 0,
    )

    def cuts(folder: Path, part: str) -> Path:
        return cuts_path(folder, args.prefix, part)

    train_dir = args.train_manifest_dir or args.manifest_dir
    data = config_from_args(
        DataConfig,
        args,
        train_cuts=[cuts(train_dir, p) for p in args.train_parts],
        valid_cuts=[cuts(args.manifest_dir, p) for p in args.valid_parts],
        unlabeled_cuts=[cuts(train_dir, p) for p in args.unlabeled_parts],
        seed=args.seed,
    )
    quantizer_id = None
    if args.quantizer is not None and args.codebook_loss_scale <= 0:
        raise SystemExit("--quantizer is only used with MVQ-KD (--codebook-loss-scale > 0)")
    if args.quantizer is not None:
        from mvq_kd.quantization import Quantizer

        quantizer_id = Quantizer.load(args.quantizer).id
    frame_kd = config_from_args(FrameKdConfig, args, quantizer_id=quantizer_id)
    layerwise_kd = config_from_args(LayerwiseKdConfig, args)
    teacher = None
    if frame_kd.runs_teacher and (args.teacher_model is None or args.teacher_layer is None):
        raise SystemExit("--embedding-source teacher needs --teacher-model and --teacher-layer")
    if layerwise_kd.enabled and args.teacher_model is None:
        raise SystemExit("layer-wise KD needs --teacher-model (a train.py experiment folder)")
    if frame_kd.runs_teacher or layerwise_kd.enabled:
        teacher = config_from_args(TeacherSpec, args)
    return config_from_args(
        TrainConfig,
        args,
        model=model,
        data=data,
        optim=config_from_args(OptimConfig, args),
        loss=config_from_args(LossConfig, args),
        frame_kd=frame_kd,
        layerwise_kd=layerwise_kd,
        sequence_kd=config_from_args(SequenceKdConfig, args),
        teacher=teacher,
    )


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
    setup_logging(log_file=args.exp_dir / "log" / f"log-train-{stamp}-{os.environ.get('RANK', 0)}")
    logging.info(f"Training into {args.exp_dir}: loading the BPE model, the data and the model")
    run(build_config(args))


if __name__ == "__main__":
    sys.exit(main())
