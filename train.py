#!/usr/bin/env python3
"""Train a Conformer transducer (teacher or student) with the pruned RNN-T loss.

Single process:
    ./train.py --exp-dir egs/synth/exp/teacher --manifest-dir data/synth/fbank \
        --bpe-model data/synth/lang_bpe_500/bpe.model --num-epochs 10
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
import sys
from pathlib import Path

from mvq_kd.codebooks import add_teacher_args, teacher_spec_from_args
from mvq_kd.dataset import DataConfig
from mvq_kd.kd.frame import EMBEDDING_SOURCES, FrameKdConfig
from mvq_kd.kd.layerwise import LayerwiseKdConfig
from mvq_kd.kd.regression import LOSS_KINDS
from mvq_kd.kd.sequence import PSEUDO_LABELS, SequenceKdConfig
from mvq_kd.model.encoder import EncoderConfig
from mvq_kd.model.transducer import TransducerConfig
from mvq_kd.nbest import WEIGHTINGS
from mvq_kd.trainer import LossConfig, OptimConfig, TrainConfig, run
from mvq_kd.utils import setup_logging


def str2bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    e = EncoderConfig()
    g = p.add_argument_group("model")
    g.add_argument("--num-encoder-layers", type=int, default=e.num_layers)
    g.add_argument("--encoder-dim", type=int, default=e.d_model)
    g.add_argument("--num-heads", type=int, default=e.num_heads)
    g.add_argument("--feedforward-dim", type=int, default=e.ffn_dim)
    g.add_argument("--conv-kernel", type=int, default=e.conv_kernel)
    g.add_argument("--subsampling-channels", type=int, default=e.subsampling_channels)
    g.add_argument("--dropout", type=float, default=e.dropout)
    g.add_argument("--causal", type=str2bool, default=False, help="streaming (causal) encoder")
    g.add_argument(
        "--chunk-size",
        type=int,
        default=e.chunk_size,
        help="decoding chunk of a causal model, in 40 ms encoder frames",
    )
    g.add_argument(
        "--left-context",
        type=int,
        default=e.left_context,
        help="left context of a causal model in encoder frames (-1: all)",
    )
    g.add_argument("--dynamic-chunk-training", type=str2bool, default=True)
    g.add_argument("--decoder-dim", type=int, default=512)
    g.add_argument("--joiner-dim", type=int, default=512)
    g.add_argument("--context-size", type=int, default=2)
    g.add_argument(
        "--ctc-loss-scale",
        type=float,
        default=0.0,
        help="weight of an auxiliary CTC loss on the encoder (0: no CTC head)",
    )


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exp-dir", type=Path, required=True, help="checkpoints and logs go here")
    p.add_argument("--bpe-model", type=Path, required=True)
    p.add_argument("--manifest-dir", type=Path, default=Path("data/synth/fbank"))
    p.add_argument(
        "--train-manifest-dir",
        type=Path,
        default=None,
        help="training cuts from here instead of --manifest-dir (e.g. data/synth/mvq: "
        "the cuts with codebook indexes of prepare.sh stage 7)",
    )
    p.add_argument("--prefix", default="synth", help="cut manifest prefix (synth, librispeech)")
    p.add_argument("--train-parts", nargs="+", default=["train"])
    p.add_argument("--valid-parts", nargs="+", default=["dev"])
    p.add_argument("--num-epochs", type=int, default=10)
    p.add_argument("--start-epoch", type=int, default=1)
    p.add_argument("--start-batch", type=int, default=0)
    p.add_argument("--save-every-n", type=int, default=0, help="checkpoint every N batches")
    p.add_argument("--keep-last-k", type=int, default=3, help="batch checkpoints to keep")
    p.add_argument("--log-interval", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--use-fp16", type=str2bool, default=False, help="AMP on CUDA")
    add_model_args(p)
    d = p.add_argument_group("data")
    d.add_argument("--max-duration", type=float, default=200.0, help="seconds per batch")
    d.add_argument("--num-buckets", type=int, default=10)
    d.add_argument("--num-workers", type=int, default=2)
    d.add_argument("--spec-augment", type=str2bool, default=True)
    d.add_argument("--time-warp-factor", type=int, default=80, help="0 turns time warp off")
    d.add_argument(
        "--musan",
        type=Path,
        default=None,
        help="noise cuts mixed into half of the training cuts at 10-20 dB SNR "
        "(MUSAN, or data/synth/fbank/noise_cuts_all.jsonl.gz)",
    )
    o = p.add_argument_group("optimization")
    oc, lc = OptimConfig(), LossConfig()
    o.add_argument("--base-lr", type=float, default=oc.base_lr)
    o.add_argument("--warmup-batches", type=int, default=oc.warmup_batches)
    o.add_argument("--lr-batches", type=float, default=oc.lr_batches)
    o.add_argument("--lr-epochs", type=float, default=oc.lr_epochs)
    o.add_argument("--weight-decay", type=float, default=oc.weight_decay)
    o.add_argument("--clip-grad-norm", type=float, default=oc.clip_grad_norm)
    o.add_argument("--prune-range", type=int, default=lc.prune_range)
    o.add_argument("--lm-scale", type=float, default=lc.lm_scale)
    o.add_argument("--am-scale", type=float, default=lc.am_scale)
    o.add_argument("--simple-loss-scale", type=float, default=lc.simple_loss_scale)
    o.add_argument("--warm-step", type=int, default=lc.warm_step)
    add_kd_args(p)
    return p


def add_kd_args(p: argparse.ArgumentParser) -> None:
    k, kc = p.add_argument_group("frame-level distillation (MVQ-KD, L1/L2)"), FrameKdConfig()
    k.add_argument(
        "--kd-layer",
        type=int,
        default=kc.layer,
        help="1-based student encoder layer that predicts the teacher targets "
        "(0: the middle layer)",
    )
    k.add_argument(
        "--codebook-loss-scale",
        type=float,
        default=kc.codebook_loss_scale,
        help="MVQ-KD: weight of the codebook-index cross-entropy (0: off; icefall: 0.1)",
    )
    k.add_argument(
        "--joint-codebook-loss",
        type=str2bool,
        default=kc.joint_codebook_loss,
        help="condition each codebook's prediction on the previous codebook's index",
    )
    k.add_argument(
        "--quantizer",
        type=Path,
        default=None,
        help="quantizer.pt of prepare.sh stage 6: the training cuts' indexes must be its",
    )
    k.add_argument("--embedding-loss", choices=("none",) + LOSS_KINDS, default=kc.embedding_loss)
    k.add_argument("--embedding-loss-scale", type=float, default=kc.embedding_loss_scale)
    k.add_argument(
        "--embedding-source",
        choices=EMBEDDING_SOURCES,
        default=kc.embedding_source,
        help="stored: the cuts' teacher_embeddings; teacher: run the --teacher-* on every batch",
    )
    lw, lc = (
        p.add_argument_group("layer-wise distillation (auxiliary non-streaming layers)"),
        (LayerwiseKdConfig()),
    )
    lw.add_argument(
        "--layerwise-student-layers",
        type=int,
        nargs="+",
        default=[],
        help="1-based student layers with an auxiliary branch (default: --layerwise-connections "
        "evenly spaced layers)",
    )
    lw.add_argument(
        "--layerwise-teacher-layers",
        type=int,
        nargs="+",
        default=[],
        help="the teacher layer of each --layerwise-student-layers",
    )
    lw.add_argument(
        "--layerwise-connections",
        type=int,
        default=lc.num_connections,
        help="connections of the default map (16 / 16 layers, 4: 4-4, 8-8, 12-12, 16-16)",
    )
    lw.add_argument(
        "--feature-loss-scale",
        type=float,
        default=lc.feature_loss_scale,
        help="weight of -log sigmoid(cos) between teacher and auxiliary features (0: off)",
    )
    lw.add_argument(
        "--attention-loss-scale",
        type=float,
        default=lc.attention_loss_scale,
        help="weight of the QQ/KK/VV attention-relation KL (0: off)",
    )
    lw.add_argument(
        "--apc-loss-scale",
        type=float,
        default=lc.apc_loss_scale,
        help="weight of the future-prediction (APC) loss (0: off)",
    )
    lw.add_argument(
        "--apc-shift", type=int, default=lc.apc_shift, help="APC: frames ahead to predict"
    )
    sq = p.add_argument_group("sequence-level distillation (teacher N-best)")
    sc = SequenceKdConfig()
    sq.add_argument(
        "--pseudo-labels",
        choices=PSEUDO_LABELS,
        default=sc.pseudo_labels,
        help="train on the teacher's 1-best or N-best of prepare.sh stage 8 (--train-manifest-dir "
        "data/<corpus>/nbest)",
    )
    sq.add_argument(
        "--nbest-weighting",
        choices=WEIGHTINGS,
        default=sc.weighting,
        help="weights of the N-best hypotheses: uniform, or the teacher's posterior "
        "renormalised over the list",
    )
    sq.add_argument(
        "--ground-truth-weight",
        type=float,
        default=sc.ground_truth_weight,
        help="a labeled cut's transcript weight beside its pseudo labels (0: pseudo labels only; "
        "1: the transcript alone, the pseudo labels train only the --unlabeled-parts)",
    )
    u = p.add_argument_group("unlabeled audio (layer-wise, on-the-fly and sequence-level KD)")
    u.add_argument(
        "--unlabeled-parts",
        nargs="*",
        default=[],
        help="cut parts without transcripts (e.g. train-unlabeled), read from the folder of the "
        "training cuts: pseudo labels and distillation losses only",
    )
    u.add_argument(
        "--unlabeled-ratio",
        type=float,
        default=DataConfig.unlabeled_ratio,
        help="unlabeled cuts per labeled cut in an epoch (the unlabeled cuts are reshuffled "
        "every epoch)",
    )
    add_teacher_args(p, required=False)


def build_config(args: argparse.Namespace) -> TrainConfig:
    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_file=str(args.bpe_model)).vocab_size()
    encoder = EncoderConfig(
        num_layers=args.num_encoder_layers,
        d_model=args.encoder_dim,
        num_heads=args.num_heads,
        ffn_dim=args.feedforward_dim,
        conv_kernel=args.conv_kernel,
        subsampling_channels=args.subsampling_channels,
        dropout=args.dropout,
        causal=args.causal,
        chunk_size=args.chunk_size,
        left_context=args.left_context,
        dynamic_chunk_training=args.dynamic_chunk_training,
    )
    model = TransducerConfig(
        encoder=encoder,
        vocab_size=vocab_size,
        decoder_dim=args.decoder_dim,
        joiner_dim=args.joiner_dim,
        context_size=args.context_size,
        ctc_head=args.ctc_loss_scale > 0,
    )

    def cuts(folder: Path, part: str) -> Path:
        return folder / f"{args.prefix}_cuts_{part}.jsonl.gz"

    train_dir = args.train_manifest_dir or args.manifest_dir
    data = DataConfig(
        train_cuts=[cuts(train_dir, p) for p in args.train_parts],
        valid_cuts=[cuts(args.manifest_dir, p) for p in args.valid_parts],
        max_duration=args.max_duration,
        num_buckets=args.num_buckets,
        spec_augment=args.spec_augment,
        time_warp_factor=args.time_warp_factor,
        musan_cuts=args.musan,
        num_workers=args.num_workers,
        seed=args.seed,
        unlabeled_cuts=[cuts(train_dir, p) for p in args.unlabeled_parts],
        unlabeled_ratio=args.unlabeled_ratio,
    )
    optim = OptimConfig(
        base_lr=args.base_lr,
        warmup_batches=args.warmup_batches,
        lr_batches=args.lr_batches,
        lr_epochs=args.lr_epochs,
        weight_decay=args.weight_decay,
        clip_grad_norm=args.clip_grad_norm,
    )
    loss = LossConfig(
        prune_range=args.prune_range,
        lm_scale=args.lm_scale,
        am_scale=args.am_scale,
        simple_loss_scale=args.simple_loss_scale,
        warm_step=args.warm_step,
        ctc_loss_scale=args.ctc_loss_scale,
    )
    quantizer_id = None
    if args.quantizer is not None and args.codebook_loss_scale <= 0:
        raise SystemExit("--quantizer is only used with MVQ-KD (--codebook-loss-scale > 0)")
    if args.quantizer is not None:
        from mvq_kd.quantization import Quantizer

        quantizer_id = Quantizer.load(args.quantizer).id
    frame_kd = FrameKdConfig(
        layer=args.kd_layer,
        codebook_loss_scale=args.codebook_loss_scale,
        joint_codebook_loss=args.joint_codebook_loss,
        embedding_loss=args.embedding_loss,
        embedding_loss_scale=args.embedding_loss_scale,
        embedding_source=args.embedding_source,
        quantizer_id=quantizer_id,
    )
    layerwise_kd = LayerwiseKdConfig(
        student_layers=tuple(args.layerwise_student_layers),
        teacher_layers=tuple(args.layerwise_teacher_layers),
        num_connections=args.layerwise_connections,
        feature_loss_scale=args.feature_loss_scale,
        attention_loss_scale=args.attention_loss_scale,
        apc_loss_scale=args.apc_loss_scale,
        apc_shift=args.apc_shift,
    )
    sequence_kd = SequenceKdConfig(
        pseudo_labels=args.pseudo_labels,
        weighting=args.nbest_weighting,
        ground_truth_weight=args.ground_truth_weight,
    )
    teacher = None
    if frame_kd.runs_teacher and (args.teacher_model is None or args.teacher_layer is None):
        raise SystemExit("--embedding-source teacher needs --teacher-model and --teacher-layer")
    if layerwise_kd.enabled and args.teacher_model is None:
        raise SystemExit("layer-wise KD needs --teacher-model (a train.py experiment folder)")
    if frame_kd.runs_teacher or layerwise_kd.enabled:
        teacher = teacher_spec_from_args(args)
    return TrainConfig(
        exp_dir=args.exp_dir,
        bpe_model=args.bpe_model,
        model=model,
        data=data,
        optim=optim,
        loss=loss,
        frame_kd=frame_kd,
        layerwise_kd=layerwise_kd,
        sequence_kd=sequence_kd,
        teacher=teacher,
        num_epochs=args.num_epochs,
        start_epoch=args.start_epoch,
        start_batch=args.start_batch,
        save_every_n=args.save_every_n,
        keep_last_k=args.keep_last_k,
        log_interval=args.log_interval,
        seed=args.seed,
        use_fp16=args.use_fp16,
        device=args.device,
    )


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    run(build_config(args))


if __name__ == "__main__":
    sys.exit(main())
