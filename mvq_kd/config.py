"""The configuration of a training run: :class:`TrainConfig` gathers the configs of every
part (model, data, optimizer, loss, distillation, teacher). Each option's help and
default are declared once, in these dataclasses (:mod:`mvq_kd.cli`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from mvq_kd.cli import option
from mvq_kd.dataset import DataConfig
from mvq_kd.kd.frame import FrameKdConfig
from mvq_kd.kd.layerwise import LayerwiseKdConfig
from mvq_kd.kd.sequence import SequenceKdConfig
from mvq_kd.loss import LossConfig
from mvq_kd.model.transducer import TransducerConfig
from mvq_kd.teacher import TeacherSpec


@dataclass
class OptimConfig:
    """AdamW or ScaledAdam (:mod:`mvq_kd.optim`) with linear warm-up and icefall's Eden decay.

    ``lr(step, epoch) = base_lr * min(1, step / warmup_batches)
    * ((step^2 + lr_batches^2) / lr_batches^2)^-0.25
    * ((epoch^2 + lr_epochs^2) / lr_epochs^2)^-0.25`` (epoch counted from 0).
    """

    optimizer: str = option(
        "adamw",
        "adamw, or scaled_adam (steps relative to each weight's RMS; peak lr ~0.04)",
        choices=["adamw", "scaled_adam"],
    )
    base_lr: float = option(2e-3, "peak learning rate")
    warmup_batches: int = option(500, "batches of linear learning-rate warm-up")
    lr_batches: float = option(5000.0, "Eden decay: its scale in batches")
    lr_epochs: float = option(6.0, "Eden decay: its scale in epochs")
    weight_decay: float = option(1e-3, "AdamW weight decay")
    clip_grad_norm: float = option(5.0, "gradients are clipped to this norm")


@dataclass
class TrainConfig:
    """Everything a training run needs (``train.py`` builds it from its arguments).

    ``teacher`` is the teacher run on the fly: for ``frame_kd.embedding_source="teacher"``
    and for layer-wise KD (a Conformer of this project).
    """

    exp_dir: Path = option(help="checkpoints and logs go here")
    bpe_model: Path = option(help="the BPE model of the transcripts (bpe.model)")
    model: TransducerConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    frame_kd: FrameKdConfig = field(default_factory=FrameKdConfig)
    layerwise_kd: LayerwiseKdConfig = field(default_factory=LayerwiseKdConfig)
    sequence_kd: SequenceKdConfig = field(default_factory=SequenceKdConfig)
    teacher: Optional[TeacherSpec] = None
    num_epochs: int = option(10, "train up to this epoch")
    start_epoch: int = option(1, "resume from epoch-(N-1).pt (1: a fresh start)")
    start_batch: int = option(
        0, "resume mid-epoch from checkpoint-B.pt with exactly the next batch (0: off)"
    )
    save_every_n: int = option(0, "checkpoint every N batches (0: after each epoch only)")
    keep_last_k: int = option(3, "batch checkpoints to keep")
    log_interval: int = option(20, "batches between progress logs")
    seed: int = option(42, "seed of initialization, batches and augmentation")
    use_fp16: bool = option(False, "AMP on CUDA")
    device: str = option("auto", "auto, cpu, cuda (auto: this rank's GPU, else the CPU)")

    def distillation_summary(self) -> Optional[Dict]:
        """The enabled distillation configs (None: a plain transducer run)."""
        kd = {}
        if self.frame_kd.enabled:
            kd["frame"] = dataclasses.asdict(self.frame_kd)
        if self.layerwise_kd.enabled:
            kd["layerwise"] = dataclasses.asdict(self.layerwise_kd)
        if self.sequence_kd.enabled:
            kd["sequence"] = dataclasses.asdict(self.sequence_kd)
        if kd and self.data.unlabeled_cuts:
            kd["unlabeled"] = {
                "cuts": [str(p) for p in self.data.unlabeled_cuts],
                "ratio": self.data.unlabeled_ratio,
            }
        return kd or None
