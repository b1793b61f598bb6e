"""MVQ-KD: the student predicts the teacher's codebook indexes (MVQ-KD paper, icefall S6).

Shapes: ``B`` batch, ``T`` student frames, ``T'`` teacher frames, ``N`` codebooks
(bytes per teacher frame), ``r`` teacher frames per student frame, ``K = 256``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mvq_kd.quantization import CODEBOOK_SIZE

IGNORE_INDEX = -100


def align_teacher_frames(
    indexes: Tensor,
    index_lens: Tensor,
    student_lens: Tensor,
    ratio: int,
    cut_ids: Optional[Sequence[str]] = None,
    tolerance: int = 2,
    pad_value: float = IGNORE_INDEX,
) -> Tensor:
    """Regroup teacher frames onto student frames.

    ``ratio`` successive teacher frames are concatenated into one student frame (HuBERT
    at 50 Hz -> a 25 Hz student: ``ratio = 2``, ``N`` -> ``2N`` targets per frame).
    Length mismatches up to ``tolerance`` student frames (subsampling edge effects) are
    trimmed or padded with ``pad_value``; larger ones raise ``ValueError`` naming the
    cut. Valid frames per utterance: :func:`aligned_lengths`.

    Args:
        indexes: (B, T', N) teacher indexes (or float embeddings); padding may hold
            anything.
        index_lens: (B,) valid teacher frames.
        student_lens: (B,) valid student frames.
        ratio: teacher frames per student frame (>= 1).
        cut_ids: names for error messages.
        pad_value: fills student frames without a target.

    Returns:
        (B, T, r * N) targets (int64 for integer input, else the input dtype),
        ``pad_value`` past each utterance's valid frames (``T = max(student_lens)``).
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    b, _, n = indexes.shape
    t = int(student_lens.max()) if b else 0
    dtype = indexes.dtype if indexes.is_floating_point() else torch.int64
    out = torch.full((b, t, ratio * n), pad_value, dtype=dtype, device=indexes.device)
    usable_lens = aligned_lengths(index_lens, student_lens, ratio).tolist()
    for i, usable in enumerate(usable_lens):
        s_len, i_len = int(student_lens[i]), int(index_lens[i])
        if abs(i_len / ratio - s_len) > tolerance:
            name = cut_ids[i] if cut_ids is not None else f"#{i}"
            raise ValueError(
                f"Cut {name}: {i_len} teacher frames do not match {s_len} student frames at "
                f"{ratio} teacher frames per student frame (tolerance {tolerance} frames); "
                "were the codebook indexes computed for this cut and frame rate?"
            )
        out[i, :usable] = indexes[i, : usable * ratio].reshape(usable, ratio * n).to(dtype)
    return out


def aligned_lengths(index_lens: Tensor, student_lens: Tensor, ratio: int) -> Tensor:
    """(B,) student frames that get a target from :func:`align_teacher_frames`."""
    return torch.minimum(torch.div(index_lens, ratio, rounding_mode="floor"), student_lens)


class CodebookLoss(nn.Module):
    """Per-codebook softmax heads on a student layer, cross-entropy against the teacher's
    indexes.

    Independent form (icefall's default): ``logits = Linear(C, M * K)(LayerNorm(h))``
    (our layer outputs are unnormalised residual streams). Joint form
    (``joint=True``): the logits of codebook ``m`` also get a learned bias indexed by the
    true index of codebook ``m - 1`` (teacher forcing, zero-initialised), which models the
    dependence between the additive codebooks.

    Every parameter receives a gradient from every batch (DDP needs no
    ``find_unused_parameters``). Training only: decoding models do not have it.
    """

    def __init__(self, input_dim: int, num_codebooks: int, joint: bool = False) -> None:
        super().__init__()
        self.num_codebooks = num_codebooks
        self.norm = nn.LayerNorm(input_dim)
        self.proj = nn.Linear(input_dim, num_codebooks * CODEBOOK_SIZE)
        # Row CODEBOOK_SIZE stands for an ignored (padding) previous index.
        self.prev_bias = (
            nn.Parameter(torch.zeros(num_codebooks - 1, CODEBOOK_SIZE + 1, CODEBOOK_SIZE))
            if joint and num_codebooks > 1
            else None
        )

    def forward(self, h: Tensor, targets: Tensor) -> Tensor:
        """Summed cross-entropy over the valid (frame, codebook) entries.

        Args:
            h: (B, T, C) student layer output.
            targets: (B, T, M) int64 indexes, ``IGNORE_INDEX`` where there is no target.

        Returns:
            scalar: the sum (normalise as the transducer loss is, e.g. per frame).
        """
        b, t, m = targets.shape
        if m != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} codebooks per frame, got {m}")
        logits = self.proj(self.norm(h)).view(b, t, m, CODEBOOK_SIZE)
        if self.prev_bias is not None:
            prev = targets[..., :-1].masked_fill(targets[..., :-1] < 0, CODEBOOK_SIZE)
            books = torch.arange(m - 1, device=h.device)
            bias = self.prev_bias[books, prev]  # (B, T, M - 1, K)
            logits = torch.cat([logits[..., :1, :], logits[..., 1:, :] + bias], dim=2)
        return nn.functional.cross_entropy(
            logits.reshape(-1, CODEBOOK_SIZE).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
