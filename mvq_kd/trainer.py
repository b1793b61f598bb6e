"""The training loop: transducer loss plus the selected distillation losses, DDP, AMP,
checkpoints with exact resume, tensorboard and progress logs.

The student and its training-only distillation modules form one :class:`TrainingModel`
(one forward for DDP); checkpoints keep the student (``model``, what ``decode.py``
loads) apart from the distillation modules (``kd_modules``).

One process per device; ``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` for
multi-GPU and multi-node runs (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from lhotse import CutSet
from torch import Tensor, nn

from mvq_kd.codebooks import EMBEDDING_FIELD, INDEX_FIELD, TeacherSpec, check_quantizer_ids
from mvq_kd.dataset import (
    AsrDataset,
    DataConfig,
    feature_stats,
    load_cuts,
    make_loader,
    make_sampler,
    train_dataset,
    training_cuts,
)
from mvq_kd.kd.frame import FrameKd, FrameKdConfig, TargetSpec, probe_field
from mvq_kd.kd.layerwise import LayerwiseKd, LayerwiseKdConfig, TeacherLayers
from mvq_kd.kd.sequence import SequenceKdConfig, cut_targets
from mvq_kd.model.encoder import ENCODER_FRAME_SHIFT, FBANK_FRAME_SHIFT, ConformerEncoder
from mvq_kd.model.transducer import Transducer, TransducerConfig, TransducerOutput
from mvq_kd.teacher import ConformerTeacher, Teacher
from mvq_kd.utils import atomic_path


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and icefall's Eden decay.

    ``lr(step, epoch) = base_lr * min(1, step / warmup_batches)
    * ((step^2 + lr_batches^2) / lr_batches^2)^-0.25
    * ((epoch^2 + lr_epochs^2) / lr_epochs^2)^-0.25`` (epoch counted from 0).
    """

    base_lr: float = 2e-3
    warmup_batches: int = 500
    lr_batches: float = 5000.0
    lr_epochs: float = 6.0
    weight_decay: float = 1e-3
    clip_grad_norm: float = 5.0


@dataclass
class LossConfig:
    """Pruned RNN-T loss settings and icefall's simple/pruned warm-up.

    Before ``warm_step`` batches the simple-loss scale falls linearly from 1.0 to
    ``simple_loss_scale`` and the pruned-loss scale rises from 0.1 to 1.0.
    ``ctc_loss_scale`` weighs the auxiliary CTC loss of models built with a CTC head.
    """

    prune_range: int = 5
    lm_scale: float = 0.25
    am_scale: float = 0.0
    simple_loss_scale: float = 0.5
    warm_step: int = 2000
    ctc_loss_scale: float = 0.0

    def scales(self, step: int) -> Tuple[float, float]:
        if step >= self.warm_step:
            return self.simple_loss_scale, 1.0
        frac = step / self.warm_step
        return 1.0 - frac * (1.0 - self.simple_loss_scale), 0.1 + 0.9 * frac


@dataclass
class TrainConfig:
    """Everything a training run needs (``train.py`` builds it from its arguments).

    ``teacher`` is the teacher run on the fly: for ``frame_kd.embedding_source="teacher"``
    and for layer-wise KD (a Conformer of this project).
    """

    exp_dir: Path
    bpe_model: Path
    model: TransducerConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    frame_kd: FrameKdConfig = field(default_factory=FrameKdConfig)
    layerwise_kd: LayerwiseKdConfig = field(default_factory=LayerwiseKdConfig)
    sequence_kd: SequenceKdConfig = field(default_factory=SequenceKdConfig)
    teacher: Optional[TeacherSpec] = None
    num_epochs: int = 10
    start_epoch: int = 1
    start_batch: int = 0
    save_every_n: int = 0
    keep_last_k: int = 3
    log_interval: int = 20
    seed: int = 42
    use_fp16: bool = False
    device: str = "auto"


def eden_lr(cfg: OptimConfig, step: int, epoch: int) -> float:
    """Learning rate after ``step`` batches in (0-based) ``epoch``."""
    warm = min(1.0, (step + 1) / cfg.warmup_batches)
    b = ((step**2 + cfg.lr_batches**2) / cfg.lr_batches**2) ** -0.25
    e = ((epoch**2 + cfg.lr_epochs**2) / cfg.lr_epochs**2) ** -0.25
    return cfg.base_lr * warm * b * e


class CutFilter:
    """Keep training cuts that the transducer can learn; count and log the others.

    A cut is dropped when its duration is outside ``[min_duration, max_duration]``, or
    when it has fewer encoder frames (after 4x subsampling) than BPE tokens: the
    RNN-T loss emits at most one symbol per frame.
    """

    def __init__(
        self, sp, min_duration: float, max_duration: float, frame_shift: float = FBANK_FRAME_SHIFT
    ):
        self.sp = sp
        self.min_duration, self.max_duration = min_duration, max_duration
        self.frame_shift = frame_shift
        self.num_dropped: Dict[str, int] = {"duration": 0, "too_few_frames": 0}

    def __call__(self, cut) -> bool:
        if not self.min_duration <= cut.duration <= self.max_duration:
            self.num_dropped["duration"] += 1
            return False
        text = cut.supervisions[0].text if cut.supervisions else None
        if text:
            num_frames = int(round(cut.duration / self.frame_shift))
            enc_frames = int(ConformerEncoder.output_lengths(torch.tensor([num_frames]))[0])
            num_tokens = len(self.sp.encode(text))
            if enc_frames < num_tokens:
                logging.debug(f"Dropping {cut.id}: {enc_frames} frames < {num_tokens} tokens")
                self.num_dropped["too_few_frames"] += 1
                return False
        return True


class ResumableSampler(torch.utils.data.Sampler):
    """Wrap a lhotse sampler so that an iteration can start after ``skip`` batches.

    lhotse's samplers are deterministic given their seed and epoch, so skipping the
    batches consumed before a checkpoint resumes with exactly the next batch.
    """

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[CutSet]:
        # islice calls iter() once: lhotse samplers restart when iter() is called again.
        skip, self.skip = self.skip, 0
        return itertools.islice(self.sampler, skip, None)


class SeededAsrDataset(AsrDataset):
    """An :class:`AsrDataset` whose random augmentation is a function of the batch.

    The torch/python RNGs are re-seeded from the batch's cut ids (inside a forked RNG
    state), so augmentation does not depend on worker count or on resumption.
    """

    def __init__(self, base: AsrDataset, seed: int) -> None:
        super().__init__(
            base.cut_transforms, base.input_transforms, base.temporal_fields, base.teacher_input
        )
        self.seed = seed

    def __getitem__(self, cuts: CutSet) -> Dict:
        batch_seed = zlib.crc32(" ".join(sorted(c.id for c in cuts)).encode()) ^ self.seed
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed)
            random.seed(batch_seed)
            try:
                return super().__getitem__(cuts)
            finally:
                random.setstate(py_state)


def tokenize(sp, texts: List[Optional[str]], device: torch.device) -> Tuple[Tensor, Tensor]:
    """BPE ids of a batch: ``(B, S)`` int64 padded with 0, and ``(B,)`` lengths."""
    ids = [sp.encode(t) if t else [] for t in texts]
    lens = torch.tensor([len(i) for i in ids], dtype=torch.int64)
    y = torch.zeros(len(ids), max(1, int(lens.max())), dtype=torch.int64)
    for i, seq in enumerate(ids):
        y[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return y.to(device), lens.to(device)


class TrainingModel(nn.Module):
    """The student transducer and its training-only distillation modules.

    One module, so that DDP sees every trained parameter in one forward.
    """

    def __init__(
        self,
        student: Transducer,
        frame_kd: Optional[FrameKd] = None,
        layerwise_kd: Optional[LayerwiseKd] = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.frame_kd = frame_kd
        self.layerwise_kd = layerwise_kd

    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        y: Tensor,
        y_lens: Tensor,
        cfg: LossConfig,
        weights: Optional[Tensor] = None,
        rows: Optional[Tensor] = None,
        kd_targets: Optional[Dict[str, Tuple[Tensor, Tensor]]] = None,
        kd_lens: Optional[Tensor] = None,
        cut_ids: Optional[List[str]] = None,
        teacher_layers: Optional[TeacherLayers] = None,
    ) -> Tuple[TransducerOutput, Dict[str, Tensor]]:
        """Transducer losses (see :meth:`Transducer.forward`: ``weights`` (R,) per
        target, ``rows`` (R,) the utterance of each target) and the unscaled distillation
        losses: frame-level with ``kd_targets`` (see :meth:`FrameKd.forward`),
        layer-wise with ``teacher_layers`` (see :meth:`LayerwiseKd.forward`); ``kd_lens``:
        (B,) student frames that have teacher targets."""
        out = self.student(
            x,
            x_lens,
            y,
            y_lens,
            prune_range=cfg.prune_range,
            am_scale=cfg.am_scale,
            lm_scale=cfg.lm_scale,
            weights=weights,
            rows=rows,
        )
        kd: Dict[str, Tensor] = {}
        if kd_targets is not None and self.frame_kd is not None:
            kd.update(self.frame_kd(out.encoder.layers, kd_lens, kd_targets, cut_ids))
        if teacher_layers is not None and self.layerwise_kd is not None:
            kd.update(self.layerwise_kd(out.encoder.layers, kd_lens, teacher_layers))
        return out, kd

    def kd_weighted_sum(self, kd: Dict[str, Tensor]) -> Tensor:
        """The distillation losses of :meth:`forward`, each times its scale, summed."""
        scales = {}
        for module in (self.frame_kd, self.layerwise_kd):
            if module is not None:
                scales.update(module.scales)
        return sum(scales[k] * v for k, v in kd.items())


# The training-only modules of a TrainingModel: attribute, checkpoint key, what they do.
KD_MODULES = (
    ("frame_kd", "kd_modules", "frame-level KD"),
    ("layerwise_kd", "layerwise_modules", "layer-wise KD"),
)


def _unwrap(model: nn.Module) -> TrainingModel:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def frame_kd_targets(
    batch: Dict, fields: List[str], teacher: Optional[Teacher], device: torch.device
) -> Dict[str, Tuple[Tensor, Tensor]]:
    """The frame-level teacher targets of a batch: the stored ``fields`` and, with a
    ``teacher``, its embeddings of the batch's (clean) ``teacher_inputs``."""
    targets = {f: (batch[f].to(device), batch[f"{f}_lens"].to(device)) for f in fields}
    if teacher is not None:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            out = teacher.embed(
                batch["teacher_inputs"].to(device), batch["teacher_input_lens"].to(device)
            )
        targets[EMBEDDING_FIELD] = (out.embeddings, out.lens)
    return targets


def layerwise_teacher_targets(
    batch: Dict, teacher: ConformerTeacher, kd: LayerwiseKd, device: torch.device
) -> TeacherLayers:
    """The teacher's layers (and attention) on the batch's clean ``teacher_inputs``."""
    with torch.autocast(device.type, enabled=False):
        return teacher.layer_outputs(
            batch["teacher_inputs"].to(device),
            batch["teacher_input_lens"].to(device),
            kd.teacher_layers,
            with_qkv=kd.needs_qkv,
        )


TRANSDUCER_LOSSES = ("simple_loss", "pruned_loss", "ctc_loss")


@dataclass
class BatchTargets:
    """The transducer targets of a batch of B cuts: R target transcripts.

    Attributes:
        texts: R transcripts (an empty one, weight 0, for a cut without target).
        weights: (R,) float loss weights (None: all 1).
        rows: (R,) int64 cut of each target (None: ``arange(B)``, one target per cut).
        has_target: (B,) bool, the cuts with a (pseudo) transcript.
    """

    texts: List[str]
    weights: Optional[Tensor]
    rows: Optional[Tensor]
    has_target: Tensor


def batch_targets(cuts: Sequence, cfg: SequenceKdConfig) -> BatchTargets:
    """The targets of the cuts (see :func:`mvq_kd.kd.sequence.cut_targets`)."""
    per_cut = [cut_targets(c, cfg) for c in cuts]
    has_target = torch.tensor([bool(t) for t in per_cut])
    # A cut without target keeps one empty row of weight 0, so that the transducer's
    # parameters are in the graph even for a batch of unlabeled cuts (DDP needs them).
    per_cut = [t or [("", 0.0)] for t in per_cut]
    texts = [text for t in per_cut for text, _ in t]
    weights = [w for t in per_cut for _, w in t]
    rows = None
    if len(texts) != len(per_cut):
        rows = torch.tensor([i for i, t in enumerate(per_cut) for _ in t], dtype=torch.int64)
    all_one = all(w == 1.0 for w in weights)
    return BatchTargets(
        texts, None if all_one else torch.tensor(weights, dtype=torch.float32), rows, has_target
    )


def compute_loss(
    model: nn.Module,
    batch: Dict,
    sp,
    cfg: LossConfig,
    step: int,
    device: torch.device,
    kd_targets: Optional[Dict[str, Tuple[Tensor, Tensor]]] = None,
    teacher_layers: Optional[TeacherLayers] = None,
    sequence_kd: Optional[SequenceKdConfig] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """Weighted transducer (+ distillation) loss of a batch, normalized per encoder frame.

    The transducer losses count the cuts with a target only (per frame of those cuts:
    ``labeled_frames``); the distillation losses count every cut (per frame), so
    unlabeled cuts without pseudo labels (text None) contribute distillation only. With
    ``sequence_kd``, each cut's targets are its weighted pseudo labels (and transcript):
    the transducer loss of a cut is the weighted sum over its targets (weights summing
    to one, see :func:`mvq_kd.kd.sequence.cut_targets`).

    Args:
        model: a :class:`TrainingModel` (or DDP around one).
        kd_targets: frame-level teacher targets (:func:`frame_kd_targets`); None: no
            frame-level KD.
        teacher_layers: the teacher's layers for layer-wise KD; None: none.
        sequence_kd: pseudo labels (None: the transcripts).

    Returns:
        the loss to back-propagate, and summed statistics for logging: ``frames``,
        ``labeled_frames``, the transducer losses (over labeled frames), the KD losses
        (unscaled, over all frames) and ``loss`` (the normalized loss times ``frames``).
    """
    x = batch["features"].to(device)
    x_lens = batch["feature_lens"].to(device)
    targets = batch_targets(batch["cuts"], sequence_kd or SequenceKdConfig())
    y, y_lens = tokenize(sp, targets.texts, device)
    labeled = targets.has_target.to(device)
    kd_lens = None
    if kd_targets is not None or teacher_layers is not None:
        kd_lens = ConformerEncoder.output_lengths(batch["speech_feature_lens"]).to(device)
    out, kd = model(
        x,
        x_lens,
        y,
        y_lens,
        cfg,
        None if targets.weights is None else targets.weights.to(device),
        None if targets.rows is None else targets.rows.to(device),
        kd_targets,
        kd_lens,
        [c.id for c in batch["cuts"]],
        teacher_layers,
    )
    simple_scale, pruned_scale = cfg.scales(step)
    transducer = simple_scale * out.simple_loss + pruned_scale * out.pruned_loss
    frames = float(out.encoder.out_lens.sum())
    labeled_frames = float(out.encoder.out_lens[labeled].sum())
    stats = {
        "frames": frames,
        "labeled_frames": labeled_frames,
        "simple_loss": float(out.simple_loss.detach()),
        "pruned_loss": float(out.pruned_loss.detach()),
    }
    if out.ctc_loss is not None:
        transducer = transducer + cfg.ctc_loss_scale * out.ctc_loss
        stats["ctc_loss"] = float(out.ctc_loss.detach())
    # A batch of unlabeled cuts only: the transducer term is 0 (its parameters still
    # get a zero gradient, as DDP needs).
    loss = transducer / max(labeled_frames, 1.0)
    if kd:
        loss = loss + _unwrap(model).kd_weighted_sum(kd) / frames
        stats.update({k: float(v.detach()) for k, v in kd.items()})
    stats["loss"] = float(loss.detach()) * frames
    return loss, stats


def per_frame(stats: Dict[str, float], key: str) -> float:
    """A summed statistic of :func:`compute_loss` per frame it was summed over."""
    frames = stats["labeled_frames"] if key in TRANSDUCER_LOSSES else stats["frames"]
    return stats[key] / max(frames, 1.0)


class Trainer:
    """Runs :class:`TrainConfig` on this process's rank."""

    def __init__(self, cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> None:
        import sentencepiece as spm

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = pick_device(cfg.device, rank)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.sp = spm.SentencePieceProcessor(model_file=str(cfg.bpe_model))
        if self.sp.vocab_size() != cfg.model.vocab_size:
            raise ValueError(
                f"BPE model {cfg.bpe_model} has {self.sp.vocab_size()} tokens but the model "
                f"config says vocab_size={cfg.model.vocab_size}"
            )
        student = Transducer(cfg.model)
        self.teacher: Optional[Teacher] = None
        if cfg.data.unlabeled_cuts and not (
            cfg.layerwise_kd.enabled or cfg.frame_kd.runs_teacher or cfg.sequence_kd.enabled
        ):
            raise ValueError(
                "unlabeled cuts only train on pseudo labels or the distillation losses of a "
                "teacher run on the fly: enable --pseudo-labels, layer-wise KD or "
                "--embedding-source teacher (or leave out --unlabeled-parts)"
            )
        if cfg.frame_kd.runs_teacher or cfg.layerwise_kd.enabled:
            self.teacher = self._build_teacher()
        if cfg.sequence_kd.enabled:
            seq = cfg.sequence_kd
            if seq.ground_truth_weight == 1.0 and not cfg.data.unlabeled_cuts:
                raise ValueError(
                    "--ground-truth-weight 1 keeps the labeled cuts on their transcripts "
                    "alone: the pseudo labels would train nothing without --unlabeled-parts "
                    "(give unlabeled cuts, a weight below 1, or --pseudo-labels none)"
                )
            logging.info(
                f"Sequence-level KD: the teacher's {seq.pseudo_labels} as pseudo labels "
                f"({seq.weighting} weights), transcript weight {seq.ground_truth_weight}"
            )
        frame_kd = self._build_frame_kd() if cfg.frame_kd.enabled else None
        layerwise_kd = self._build_layerwise_kd() if cfg.layerwise_kd.enabled else None
        model = TrainingModel(student, frame_kd, layerwise_kd).to(self.device)
        self.model: nn.Module = model
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.optim.base_lr, weight_decay=cfg.optim.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.use_fp16)
        self.step = 0  # batches trained so far, over all epochs
        self.epoch = cfg.start_epoch
        self.batch_in_epoch = 0  # batches of self.epoch already trained
        self.num_nonfinite = 0
        self.train_seconds = 0.0  # wall time of finished epochs, kept across resumes
        self.tb = None
        if rank == 0:
            cfg.exp_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(cfg.exp_dir / "tensorboard"))
        if not self._resume():
            mean, std = feature_stats(load_cuts(cfg.data.train_cuts))
            student.encoder.subsampling.set_feature_stats(mean.to(self.device), std.to(self.device))
            logging.info(
                f"Feature normalization from training cuts: mean {float(mean.mean()):.2f}, "
                f"std {float(std.mean()):.2f} (averaged over bins)"
            )
        if world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.cut_filter = CutFilter(self.sp, cfg.data.min_duration, cfg.data.max_cut_duration)
        self.train_cuts = training_cuts(cfg.data)
        self.sampler = ResumableSampler(
            make_sampler(
                self.train_cuts.cuts.filter(self.cut_filter),
                cfg.data,
                shuffle=True,
                world_size=world_size,
                rank=rank,
            )
        )
        dataset = train_dataset(
            cfg.data,
            temporal_fields=cfg.frame_kd.cut_fields(),
            teacher_input=self.teacher.input_type if self.teacher is not None else None,
        )
        self.train_loader = make_loader(
            SeededAsrDataset(dataset, cfg.seed),
            self.sampler,
            cfg.data.num_workers,
            seed=cfg.seed,
        )
        valid_sampler = make_sampler(
            load_cuts(cfg.data.valid_cuts),
            cfg.data,
            shuffle=False,
            world_size=world_size,
            rank=rank,
        )
        self.valid_loader = make_loader(AsrDataset(), valid_sampler, cfg.data.num_workers)

    def _build_teacher(self) -> Teacher:
        """The frozen teacher run on every batch."""
        cfg = self.cfg
        if cfg.teacher is None:
            raise ValueError(
                "distillation from a teacher run on the fly (--embedding-source teacher, "
                "layer-wise KD) needs --teacher-model"
            )
        teacher = cfg.teacher.build(self.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        logging.info(
            f"Teacher on the fly: {cfg.teacher.kind} {cfg.teacher.model} "
            f"({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M parameters, frozen)"
        )
        return teacher

    def _build_layerwise_kd(self) -> LayerwiseKd:
        """The auxiliary non-streaming branches of layer-wise KD."""
        cfg, teacher = self.cfg, self.teacher
        if not isinstance(teacher, ConformerTeacher):
            raise ValueError(
                "layer-wise KD needs a Conformer teacher trained by train.py (--teacher-kind "
                f"conformer): it reads the teacher's attention; got {cfg.teacher.kind}"
            )
        if abs(teacher.frame_shift - ENCODER_FRAME_SHIFT) > 1e-6:
            raise ValueError(
                f"layer-wise KD needs the teacher's frame rate to be the student's: teacher "
                f"{teacher.frame_shift} s, student {ENCODER_FRAME_SHIFT} s per frame"
            )
        if cfg.data.spec_augment and cfg.data.time_warp_factor > 0:
            raise ValueError(
                "Time-warp SpecAugment moves frames away from the teacher's: use "
                "--time-warp-factor 0 (or --spec-augment false) with layer-wise KD"
            )
        enc = cfg.model.encoder
        kd = LayerwiseKd(
            cfg.layerwise_kd,
            enc.d_model,
            enc.num_layers,
            teacher.dim,
            teacher.num_layers,
            teacher.num_heads,
            dropout=enc.dropout,
        )
        scales = ", ".join(f"{k} {v}" for k, v in kd.scales.items() if v > 0)
        logging.info(
            f"Layer-wise KD (student -> teacher layers {kd.pairs}; {scales}"
            + (f", APC {kd.apc_shift} frames ahead" if kd.scales["apc_loss"] else "")
            + f"): {sum(p.numel() for p in kd.parameters()) / 1e6:.2f} M training-only parameters"
        )
        return kd

    def _build_frame_kd(self) -> FrameKd:
        """The frame-KD heads, sized from the training cuts' targets (or the teacher)."""
        cfg, kd = self.cfg, self.cfg.frame_kd
        if cfg.data.spec_augment and cfg.data.time_warp_factor > 0:
            raise ValueError(
                "Time-warp SpecAugment moves frames away from their teacher targets: use "
                "--time-warp-factor 0 (or --spec-augment false) with frame-level KD"
            )
        cuts = load_cuts(cfg.data.train_cuts)
        # Stored targets of unlabeled cuts: prepare.sh stage 7 on their part too.
        for name in kd.cut_fields() if cfg.data.unlabeled_cuts else ():
            probe_field(load_cuts(cfg.data.unlabeled_cuts), name, what="unlabeled cuts")
        codebooks, embeddings = None, None
        if kd.use_codebooks:
            codebooks = probe_field(cuts, INDEX_FIELD)
            qid = check_quantizer_ids(
                load_cuts(cfg.data.train_cuts + cfg.data.unlabeled_cuts), kd.quantizer_id
            )
            logging.info(
                f"MVQ-KD: {codebooks.dim} codebooks per {codebooks.frame_shift * 1000:.0f} ms "
                f"teacher frame, quantizer {qid}, loss scale {kd.codebook_loss_scale}"
            )
        if kd.runs_teacher:
            embeddings = TargetSpec(self.teacher.dim, self.teacher.frame_shift)
        elif kd.use_embeddings:
            embeddings = probe_field(cuts, EMBEDDING_FIELD)
        if embeddings is not None:
            logging.info(
                f"{kd.embedding_loss.upper()} regression of {embeddings.dim}-dim teacher "
                f"embeddings ({kd.embedding_source}), loss scale {kd.embedding_loss_scale}"
            )
        enc = cfg.model.encoder
        frame_kd = FrameKd(
            kd,
            enc.d_model,
            enc.num_layers,
            codebooks,
            embeddings,
            student_frame_shift=ENCODER_FRAME_SHIFT,
        )
        logging.info(
            f"Frame-level KD on student layer {frame_kd.layer}: "
            f"{sum(p.numel() for p in frame_kd.parameters()) / 1e6:.2f} M training-only "
            "parameters"
        )
        return frame_kd

    # ------------------------------------------------------------------ checkpoints

    def _resume(self) -> bool:
        """Load the checkpoint named by start_epoch/start_batch; False for a fresh start."""
        cfg = self.cfg
        if cfg.start_batch > 0:
            path = cfg.exp_dir / f"checkpoint-{cfg.start_batch}.pt"
        elif cfg.start_epoch > 1:
            path = cfg.exp_dir / f"epoch-{cfg.start_epoch - 1}.pt"
        else:
            return False
        if not path.is_file():
            raise FileNotFoundError(f"Cannot resume: no checkpoint {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["model_config"] != cfg.model.to_dict():
            raise ValueError(
                f"{path} was trained with another model config: {ckpt['model_config']}"
            )
        model = _unwrap(self.model)
        model.student.load_state_dict(ckpt["model"])
        for attr, key, what in KD_MODULES:
            module = getattr(model, attr)
            if module is None:
                continue
            if key not in ckpt:
                raise ValueError(
                    f"{path} has no {key}: it was trained without {what}; resume it with the "
                    "options it was trained with"
                )
            module.load_state_dict(ckpt[key])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["grad_scaler"])
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.batch_in_epoch = ckpt["batch_in_epoch"]
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        rng = ckpt["rng"][min(self.rank, len(ckpt["rng"]) - 1)]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if torch.cuda.is_available() and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        logging.info(
            f"Resumed from {path}: epoch {self.epoch}, {self.batch_in_epoch} batches into it, "
            f"step {self.step}"
        )
        return True

    def _rng_state(self) -> Dict:
        return {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def save(self, path: Path) -> None:
        """Write a checkpoint atomically (rank 0 writes; all ranks' RNG states are kept)."""
        rngs = [self._rng_state()]
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.rank != 0:
            return
        model = _unwrap(self.model)
        ckpt = {
            "model": model.student.state_dict(),
            "model_config": self.cfg.model.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_seconds": self.train_seconds,
            "rng": rngs,
            "bpe_model": str(self.cfg.bpe_model),
        }
        for attr, key, _ in KD_MODULES:
            if getattr(model, attr) is not None:
                ckpt[key] = getattr(model, attr).state_dict()
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
        logging.info(f"Saved {path}")

    def _remove_old_checkpoints(self) -> None:
        if self.rank != 0:
            return
        ckpts = sorted(
            self.cfg.exp_dir.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1])
        )
        for old in ckpts[: -self.cfg.keep_last_k]:
            old.unlink()

    # ------------------------------------------------------------------ loops

    def _all_finite(self, loss: Tensor) -> bool:
        ok = torch.tensor([float(torch.isfinite(loss).all())], device=self.device)
        if self.world_size > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() == 1.0)

    def train_step(self, batch: Dict) -> Optional[Tuple[Dict[str, float], float]]:
        """One update on ``batch`` (frame-KD targets, forward, backward, clipping,
        optimizer step): its statistics (see :func:`compute_loss`) and gradient norm,
        or None when the loss was not finite (the batch is skipped and counted)."""
        cfg = self.cfg
        kd_targets, teacher_layers = None, None
        if cfg.frame_kd.enabled:
            kd_targets = frame_kd_targets(
                batch,
                cfg.frame_kd.cut_fields(),
                self.teacher if cfg.frame_kd.runs_teacher else None,
                self.device,
            )
        layerwise = _unwrap(self.model).layerwise_kd
        if layerwise is not None:
            teacher_layers = layerwise_teacher_targets(batch, self.teacher, layerwise, self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=cfg.use_fp16):
            loss, stats = compute_loss(
                self.model,
                batch,
                self.sp,
                cfg.loss,
                self.step,
                self.device,
                kd_targets,
                teacher_layers,
                cfg.sequence_kd,
            )
        self.batch_in_epoch += 1
        self.step += 1
        if not self._all_finite(loss):
            self.num_nonfinite += 1
            logging.warning(
                f"Non-finite loss at step {self.step} (cuts {[c.id for c in batch['cuts']][:4]}"
                f"...): batch skipped ({self.num_nonfinite} so far)"
            )
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return stats, float(grad_norm)

    def train_one_epoch(self) -> Dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        self.train_cuts.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.batch_in_epoch
        for k in self.cut_filter.num_dropped:
            self.cut_filter.num_dropped[k] = 0
        totals: Dict[str, float] = {}
        t0, frames_since = time.time(), 0.0
        for batch in self.train_loader:
            lr = eden_lr(cfg.optim, self.step, self.epoch - 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            result = self.train_step(batch)
            if result is None:
                continue
            stats, grad_norm = result
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            frames_since += stats["frames"]
            if self.step % cfg.log_interval == 0:
                elapsed = time.time() - t0
                parts = ", ".join(
                    f"{k.removesuffix('_loss')} {per_frame(stats, k):.4f}"
                    for k in stats
                    if k.endswith("_loss")
                )
                logging.info(
                    f"epoch {self.epoch} batch {self.batch_in_epoch} step {self.step}: "
                    f"loss {stats['loss'] / stats['frames']:.4f} ({parts}) lr {lr:.2e} "
                    f"grad-norm {grad_norm:.2f} "
                    f"{frames_since * ENCODER_FRAME_SHIFT / max(elapsed, 1e-9):.1f} s audio/s"
                )
                if self.tb is not None:
                    for k in stats:
                        if k == "loss" or k.endswith("_loss"):
                            self.tb.add_scalar(f"train/{k}", per_frame(stats, k), self.step)
                    self.tb.add_scalar("train/lr", lr, self.step)
                    self.tb.add_scalar("train/grad_norm", grad_norm, self.step)
                t0, frames_since = time.time(), 0.0
            if cfg.save_every_n > 0 and self.step % cfg.save_every_n == 0:
                self.save(cfg.exp_dir / f"checkpoint-{self.step}.pt")
                self._remove_old_checkpoints()
        return totals

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        model = self.model
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for batch in self.valid_loader:
            _, stats = compute_loss(model, batch, self.sp, self.cfg.loss, self.step, self.device)
            totals += torch.tensor(
                [stats["frames"], stats["simple_loss"], stats["pruned_loss"]],
                dtype=torch.float64,
                device=self.device,
            )
        if self.world_size > 1:
            dist.all_reduce(totals)
        model.train()
        frames, simple, pruned = totals.tolist()
        return {"simple_loss": simple / frames, "pruned_loss": pruned / frames}

    def train(self) -> None:
        cfg = self.cfg
        model = _unwrap(self.model)
        logging.info(
            f"Training {model.student.num_params() / 1e6:.2f} M parameters on {self.device} "
            f"(world size {self.world_size}), epochs {self.epoch}..{cfg.num_epochs}"
        )
        while self.epoch <= cfg.num_epochs:
            t0 = time.time()
            totals = self.train_one_epoch()
            valid = self.validate()
            frames = max(totals.get("frames", 0.0), 1.0)
            logging.info(
                f"Epoch {self.epoch} done in {time.time() - t0:.0f} s: train loss "
                f"{totals.get('loss', math.nan) / frames:.4f}, valid simple "
                f"{valid['simple_loss']:.4f} pruned {valid['pruned_loss']:.4f}; dropped cuts "
                f"{self.cut_filter.num_dropped}, non-finite batches {self.num_nonfinite}"
            )
            if self.tb is not None:
                for k, v in valid.items():
                    self.tb.add_scalar(f"valid/{k}", v, self.step)
            self.train_seconds += time.time() - t0
            self.epoch += 1
            self.batch_in_epoch = 0
            self.save(cfg.exp_dir / f"epoch-{self.epoch - 1}.pt")
        if self.rank == 0:
            summary = {
                "params": model.student.num_params(),
                "epochs": self.epoch - 1,
                "train_seconds": round(self.train_seconds, 1),
                "world_size": self.world_size,
                "device": str(self.device),
                "distillation": distillation_summary(cfg),
            }
            with atomic_path(cfg.exp_dir / "train-summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1) + "\n")
        if self.tb is not None:
            self.tb.close()


def distillation_summary(cfg: TrainConfig) -> Optional[Dict]:
    """The enabled distillation configs (None: a plain transducer run)."""
    kd = {}
    if cfg.frame_kd.enabled:
        kd["frame"] = dataclasses.asdict(cfg.frame_kd)
    if cfg.layerwise_kd.enabled:
        kd["layerwise"] = dataclasses.asdict(cfg.layerwise_kd)
    if cfg.sequence_kd.enabled:
        kd["sequence"] = dataclasses.asdict(cfg.sequence_kd)
    if kd and cfg.data.unlabeled_cuts:
        kd["unlabeled"] = {
            "cuts": [str(p) for p in cfg.data.unlabeled_cuts],
            "ratio": cfg.data.unlabeled_ratio,
        }
    return kd or None


def pick_device(name: str, rank: int = 0) -> torch.device:
    """``"auto"``: this rank's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        return torch.device("cpu")
    return torch.device(name)


def run(cfg: TrainConfig) -> None:
    """Entry point: sets up the process group when launched by torchrun, then trains."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    try:
        Trainer(cfg, rank, world_size).train()
    finally:
        if world_size > 1:
            dist.destroy_process_group()
