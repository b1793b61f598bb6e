"""MVQ-KD: the student predicts the teacher's codebook indexes (MVQ-KD paper, icefall S6).

Shapes: ``B`` batch, ``T`` student frames, ``T'`` teacher frames, ``N`` codebooks
(bytes per teacher frame), ``r`` teacher frames per student frame, ``K = 256``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

IGNORE_INDEX = -100


def align_teacher_frames(
    indexes: Tensor,
    index_lens: Tensor,
    student_lens: Tensor,
    ratio: int,
    cut_ids: Optional[Sequence[str]] = None,
    tolerance: int = 2,
) -> Tensor:
    """Regroup teacher frames onto student frames.

    ``ratio`` successive teacher frames are concatenated into one student frame (HuBERT
    at 50 Hz -> a 25 Hz student: ``ratio = 2``, ``N`` -> ``2N`` targets per frame).
    Length mismatches up to ``tolerance`` student frames (subsampling edge effects) are
    trimmed or padded with ``IGNORE_INDEX``; larger ones raise ``ValueError`` naming
    the cut.

    Args:
        indexes: (B, T', N) integer teacher indexes; padding may hold anything.
        index_lens: (B,) valid teacher frames.
        student_lens: (B,) valid student frames.
        ratio: teacher frames per student frame (>= 1).
        cut_ids: names for error messages.

    Returns:
        (B, T, r * N) int64 targets, ``IGNORE_INDEX`` past each utterance's valid frames
        (``T = max(student_lens)``).
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    b, _, n = indexes.shape
    t = int(student_lens.max()) if b else 0
    out = torch.full((b, t, ratio * n), IGNORE_INDEX, dtype=torch.int64, device=indexes.device)
    for i in range(b):
        s_len, i_len = int(student_lens[i]), int(index_lens[i])
        usable = min(i_len // ratio, s_len)
        if abs(i_len / ratio - s_len) > tolerance:
            name = cut_ids[i] if cut_ids is not None else f"#{i}"
            raise ValueError(
                f"Cut {name}: {i_len} teacher frames do not match {s_len} student frames at "
                f"{ratio} teacher frames per student frame (tolerance {tolerance} frames); "
                "were the codebook indexes computed for this cut and frame rate?"
            )
        out[i, :usable] = indexes[i, : usable * ratio].reshape(usable, ratio * n).long()
    return out
