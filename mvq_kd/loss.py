"""The training loss of a batch: pruned RNN-T (+ CTC) plus the enabled distillation losses.

The student and its training-only distillation modules form one :class:`TrainingModel`
(one forward, so that DDP sees every trained parameter); :func:`compute_loss` weighs and
normalizes its losses; :func:`frame_kd_targets` and :func:`layerwise_teacher_targets`
give it the teacher's side of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from mvq_kd.cli import option
from mvq_kd.dataset import tokenize
from mvq_kd.fields import EMBEDDING_FIELD
from mvq_kd.kd.frame import FrameKd
from mvq_kd.kd.layerwise import LayerwiseKd
from mvq_kd.kd.sequence import SequenceKdConfig, batch_targets
from mvq_kd.model.encoder import ConformerEncoder
from mvq_kd.model.transducer import Transducer, TransducerOutput
from mvq_kd.teacher import ConformerTeacher, Teacher, TeacherLayers

TRANSDUCER_LOSSES = ("simple_loss", "pruned_loss", "ctc_loss")


@dataclass
class LossConfig:
    """Pruned RNN-T loss settings and icefall's simple/pruned warm-up.

    Before ``warm_step`` batches the simple-loss scale falls linearly from 1.0 to
    ``simple_loss_scale`` and the pruned-loss scale rises from 0.1 to 1.0.
    ``ctc_loss_scale`` weighs the auxiliary CTC loss of models built with a CTC head.
    """

    prune_range: int = option(5, "symbols per frame of the pruned RNN-T band")
    lm_scale: float = option(0.25, "weight of the LM-only term of the smoothed simple loss")
    am_scale: float = option(0.0, "weight of the AM-only term of the smoothed simple loss")
    simple_loss_scale: float = option(0.5, "weight of the simple loss after the warm-up")
    warm_step: int = option(2000, "batches of the simple/pruned loss warm-up")
    ctc_loss_scale: float = option(
        0.0, "weight of an auxiliary CTC loss on the encoder (0: no CTC head)"
    )

    def scales(self, step: int) -> Tuple[float, float]:
        """(simple, pruned) loss scales after ``step`` batches."""
        if step >= self.warm_step:
            return self.simple_loss_scale, 1.0
        frac = step / self.warm_step
        return 1.0 - frac * (1.0 - self.simple_loss_scale), 0.1 + 0.9 * frac


@dataclass
class TokenTargets:
    """The R target transcripts of a batch of B cuts, tokenized, on the device.

    Attributes:
        y: (R, S) int64 BPE ids padded with 0; y_lens: (R,) int64.
        weights: (R,) float loss weights (None: all 1).
        rows: (R,) int64 cut of each target (None: ``arange(B)``, one target per cut).
    """

    y: Tensor
    y_lens: Tensor
    weights: Optional[Tensor] = None
    rows: Optional[Tensor] = None


@dataclass
class TeacherTargets:
    """The teacher's side of a batch (None: that distillation is off).

    Attributes:
        frame: frame-level targets (:func:`frame_kd_targets`): field name ->
            ((B, T', ...) targets, (B,) lengths).
        layers: the teacher's layers for layer-wise KD (:func:`layerwise_teacher_targets`).
    """

    frame: Optional[Dict[str, Tuple[Tensor, Tensor]]] = None
    layers: Optional[TeacherLayers] = None


class TrainingModel(nn.Module):
    """The student transducer and its training-only distillation modules."""

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
        targets: TokenTargets,
        cfg: LossConfig,
        teacher: Optional[TeacherTargets] = None,
        kd_lens: Optional[Tensor] = None,
        cut_ids: Optional[List[str]] = None,
    ) -> Tuple[TransducerOutput, Dict[str, Tensor]]:
        """Transducer losses of ``x`` (B, T, F) / ``x_lens`` (B,) against ``targets``
        (see :meth:`Transducer.forward`), and the unscaled distillation losses against
        ``teacher`` (see :meth:`FrameKd.forward`, :meth:`LayerwiseKd.forward`);
        ``kd_lens``: (B,) student frames that have teacher targets; ``cut_ids`` name the
        cuts in errors."""
        out = self.student(
            x,
            x_lens,
            targets.y,
            targets.y_lens,
            prune_range=cfg.prune_range,
            am_scale=cfg.am_scale,
            lm_scale=cfg.lm_scale,
            weights=targets.weights,
            rows=targets.rows,
        )
        kd: Dict[str, Tensor] = {}
        teacher = teacher or TeacherTargets()
        if teacher.frame is not None and self.frame_kd is not None:
            kd.update(self.frame_kd(out.encoder.layers, kd_lens, teacher.frame, cut_ids))
        if teacher.layers is not None and self.layerwise_kd is not None:
            kd.update(self.layerwise_kd(out.encoder.layers, kd_lens, teacher.layers))
        return out, kd

    def kd_weighted_sum(self, kd: Dict[str, Tensor]) -> Tensor:
        """The distillation losses of :meth:`forward`, each times its scale, summed."""
        scales = {}
        for module in (self.frame_kd, self.layerwise_kd):
            if module is not None:
                scales.update(module.scales)
        return sum(scales[k] * v for k, v in kd.items())


def unwrap(model: nn.Module) -> TrainingModel:
    """The :class:`TrainingModel` inside DDP (or the model itself)."""
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


def compute_loss(
    model: nn.Module,
    batch: Dict,
    sp,
    cfg: LossConfig,
    device: torch.device,
    *,
    step: int = 0,
    teacher: Optional[TeacherTargets] = None,
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
        batch: an :class:`mvq_kd.dataset.AsrDataset` batch.
        sp: the SentencePiece model of the transcripts.
        step: batches trained so far (the loss warm-up).
        teacher: the teacher's targets (None: no distillation).
        sequence_kd: pseudo labels (None: the transcripts).

    Returns:
        the loss to back-propagate, and summed statistics for logging: ``frames``,
        ``labeled_frames``, the transducer losses (over labeled frames), the KD losses
        (unscaled, over all frames) and ``loss`` (the normalized loss times ``frames``).
    """
    x = batch["features"].to(device)
    x_lens = batch["feature_lens"].to(device)
    texts = batch_targets(batch["cuts"], sequence_kd or SequenceKdConfig())
    y, y_lens = tokenize(sp, texts.texts, device)
    targets = TokenTargets(
        y,
        y_lens,
        None if texts.weights is None else texts.weights.to(device),
        None if texts.rows is None else texts.rows.to(device),
    )
    labeled = texts.has_target.to(device)
    kd_lens = None
    if teacher is not None:
        kd_lens = ConformerEncoder.output_lengths(batch["speech_feature_lens"]).to(device)
    out, kd = model(x, x_lens, targets, cfg, teacher, kd_lens, [c.id for c in batch["cuts"]])
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
        loss = loss + unwrap(model).kd_weighted_sum(kd) / frames
        stats.update({k: float(v.detach()) for k, v in kd.items()})
    stats["loss"] = float(loss.detach()) * frames
    return loss, stats


def per_frame(stats: Dict[str, float], key: str) -> float:
    """A summed statistic of :func:`compute_loss` per frame it was summed over."""
    frames = stats["labeled_frames"] if key in TRANSDUCER_LOSSES else stats["frames"]
    return stats[key] / max(frames, 1.0)
