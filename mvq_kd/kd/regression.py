"""The MVQ-KD paper's baselines: L1 / L2 regression of the teacher's float embeddings.

Shapes: ``B`` batch, ``T`` student frames, ``C`` student dim, ``D`` target dim (teacher
dim times teacher frames per student frame, see
:func:`mvq_kd.kd.codebook.align_teacher_frames`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mvq_kd.model.encoder import valid_mask

LOSS_KINDS = ("l1", "l2")


class EmbeddingRegressionLoss(nn.Module):
    """``Linear(C, D)(LayerNorm(h))`` regresses the teacher embedding of each frame.

    The targets are layer-normalised per frame (without affine parameters): teacher
    residual streams are unnormalised (RMS ~15 for the ``egs/synth`` teacher), and the
    normalisation keeps the loss scale independent of the teacher. Per frame the loss
    is the mean over ``D`` of ``|pred - target|`` (``l1``) or ``(pred - target)^2``
    (``l2``); frames are summed.
    """

    def __init__(self, input_dim: int, target_dim: int, kind: str = "l2") -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
        self.kind = kind
        self.norm = nn.LayerNorm(input_dim)
        self.proj = nn.Linear(input_dim, target_dim)

    def forward(self, h: Tensor, targets: Tensor, lens: Tensor) -> Tensor:
        """Summed per-frame loss over the valid frames.

        Args:
            h: (B, T, C) student layer output.
            targets: (B, T, D) float teacher embeddings; frames past ``lens`` ignored.
            lens: (B,) frames with a target.

        Returns:
            scalar: the sum over valid frames.
        """
        if targets.size(-1) != self.proj.out_features:
            raise ValueError(
                f"expected {self.proj.out_features}-dim targets, got {targets.size(-1)}"
            )
        pred = self.proj(self.norm(h)).float()
        target = nn.functional.layer_norm(targets.float(), targets.shape[-1:])
        diff = pred - target
        per_frame = (diff.abs() if self.kind == "l1" else diff.pow(2)).mean(-1)  # (B, T)
        valid = valid_mask(lens, h.size(1))
        return torch.where(valid, per_frame, torch.zeros_like(per_frame)).sum()
