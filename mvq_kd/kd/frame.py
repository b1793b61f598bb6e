"""Frame-level distillation of one teacher layer into one student encoder layer.

* MVQ-KD: the student predicts the teacher's codebook indexes, stored in the cuts by
  ``prepare.sh`` stage 7 (:class:`~mvq_kd.kd.codebook.CodebookLoss`).
* The MVQ-KD paper's baselines: L1 / L2 regression of the teacher's float embeddings
  (:class:`~mvq_kd.kd.regression.EmbeddingRegressionLoss`), stored in the cuts
  (``--store-embeddings true`` in stage 7) or computed by the teacher on the fly.

Teacher frames are regrouped onto student frames (any integer ratio, e.g. HuBERT 20 ms
-> student 40 ms: 2). The modules here are training-only: checkpoints keep them apart
from the student, which decodes without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from lhotse import CutSet
from torch import Tensor, nn

from mvq_kd.cli import option
from mvq_kd.dataset import speech_track
from mvq_kd.fields import EMBEDDING_FIELD, INDEX_FIELD
from mvq_kd.kd.codebook import CodebookLoss, align_teacher_frames, aligned_lengths
from mvq_kd.kd.regression import LOSS_KINDS, EmbeddingRegressionLoss

EMBEDDING_SOURCES = ("stored", "teacher")


@dataclass
class FrameKdConfig:
    """Which frame-level distillation losses to use.

    Attributes:
        layer: 1-based student encoder layer that predicts the targets (0: the middle
            layer, ``num_layers // 2``, as icefall).
        codebook_loss_scale: weight of the codebook cross-entropy (summed over
            codebooks and frames, like the transducer loss); 0 turns MVQ-KD off.
        joint_codebook_loss: condition each codebook's head on the previous codebook.
        embedding_loss: ``none``, ``l1`` or ``l2`` regression of teacher embeddings.
        embedding_loss_scale: its weight (per frame: mean over dimensions).
        embedding_source: ``stored`` (the cuts' ``teacher_embeddings``) or ``teacher``
            (the teacher runs on every batch).
        quantizer_id: when set, the training cuts' indexes must come from this quantizer.
    """

    layer: int = option(
        0,
        "1-based student encoder layer that predicts the teacher targets (0: the middle layer)",
        flag="--kd-layer",
    )
    codebook_loss_scale: float = option(
        0.0, "MVQ-KD: weight of the codebook-index cross-entropy (0: off; icefall: 0.1)"
    )
    joint_codebook_loss: bool = option(
        False, "condition each codebook's prediction on the previous codebook's index"
    )
    embedding_loss: str = option(
        "none", "L1/L2 regression of the teacher embeddings", choices=("none",) + LOSS_KINDS
    )
    embedding_loss_scale: float = option(1.0, "weight of the embedding regression")
    embedding_source: str = option(
        "stored",
        "stored: the cuts' teacher_embeddings; teacher: run the --teacher-* on every batch",
        choices=EMBEDDING_SOURCES,
    )
    quantizer_id: Optional[str] = None

    def __post_init__(self) -> None:
        if self.embedding_loss not in ("none",) + LOSS_KINDS:
            raise ValueError(f"embedding_loss must be none, l1 or l2, got {self.embedding_loss!r}")
        if self.embedding_source not in EMBEDDING_SOURCES:
            raise ValueError(
                f"embedding_source must be one of {EMBEDDING_SOURCES}, "
                f"got {self.embedding_source!r}"
            )
        if self.codebook_loss_scale < 0 or self.embedding_loss_scale < 0:
            raise ValueError("loss scales must be >= 0")

    @property
    def use_codebooks(self) -> bool:
        return self.codebook_loss_scale > 0

    @property
    def use_embeddings(self) -> bool:
        return self.embedding_loss != "none"

    @property
    def enabled(self) -> bool:
        return self.use_codebooks or self.use_embeddings

    @property
    def runs_teacher(self) -> bool:
        """The teacher runs on every batch (embedding targets computed on the fly)."""
        return self.use_embeddings and self.embedding_source == "teacher"

    def cut_fields(self) -> List[str]:
        """The cut fields the training batches must carry."""
        fields = [INDEX_FIELD] if self.use_codebooks else []
        if self.use_embeddings and not self.runs_teacher:
            fields.append(EMBEDDING_FIELD)
        return fields


@dataclass
class TargetSpec:
    """Per teacher frame: ``dim`` codebooks (or embedding dimensions), every
    ``frame_shift`` seconds."""

    dim: int
    frame_shift: float


def probe_field(
    cuts: CutSet, name: str, max_cuts: int = 100, what: str = "training cuts"
) -> TargetSpec:
    """:class:`TargetSpec` of the temporal field ``name`` from the first cut that has it
    (``what``: the cuts, for the error message)."""
    for i, cut in enumerate(cuts):
        if i >= max_cuts:
            break
        speech = speech_track(cut)
        if speech.has_custom(name):
            arr = speech.custom[name]
            return TargetSpec(dim=int(arr.shape[1]), frame_shift=float(arr.frame_shift))
    raise ValueError(
        f"None of the first {max_cuts} {what} has a {name!r} field: train on the "
        "manifests of prepare.sh stage 7 (e.g. --train-manifest-dir data/synth/mvq"
        + (", stage 7 run with --store-embeddings true" if name == EMBEDDING_FIELD else "")
        + ")"
    )


def frame_ratio(teacher_shift: float, student_shift: float) -> int:
    """Teacher frames per student frame; an error unless it is a positive integer."""
    ratio = student_shift / teacher_shift
    if round(ratio) < 1 or abs(ratio - round(ratio)) > 1e-3:
        raise ValueError(
            f"The teacher's frame shift {teacher_shift} s does not divide the student's "
            f"{student_shift} s: frame-level KD needs an integer number of teacher frames "
            "per student frame"
        )
    return int(round(ratio))


class FrameKd(nn.Module):
    """The training-only heads of frame-level KD on one student layer.

    Args:
        cfg: which losses.
        student_dim, num_layers: the student encoder's width and depth.
        codebooks: the stored codebook indexes (None: no MVQ-KD).
        embeddings: the teacher embeddings, stored or computed (None: no regression).
        student_frame_shift: seconds per student encoder frame.
    """

    def __init__(
        self,
        cfg: FrameKdConfig,
        student_dim: int,
        num_layers: int,
        codebooks: Optional[TargetSpec],
        embeddings: Optional[TargetSpec],
        student_frame_shift: float,
    ) -> None:
        super().__init__()
        self.layer = cfg.layer or max(1, num_layers // 2)
        if not 1 <= self.layer <= num_layers:
            raise ValueError(f"KD layer must be in 1..{num_layers} (1-based), got {cfg.layer}")
        # Loss name -> weight (the training step sums ``scale * loss``).
        self.scales = {
            "codebook_loss": cfg.codebook_loss_scale,
            "embedding_loss": cfg.embedding_loss_scale,
        }
        self.codebook, self.embedding = None, None
        self.codebook_ratio = self.embedding_ratio = 1
        if codebooks is not None:
            self.codebook_ratio = frame_ratio(codebooks.frame_shift, student_frame_shift)
            self.codebook = CodebookLoss(
                student_dim, self.codebook_ratio * codebooks.dim, cfg.joint_codebook_loss
            )
        if embeddings is not None:
            self.embedding_ratio = frame_ratio(embeddings.frame_shift, student_frame_shift)
            self.embedding = EmbeddingRegressionLoss(
                student_dim, self.embedding_ratio * embeddings.dim, cfg.embedding_loss
            )

    def forward(
        self,
        layers: List[Tensor],
        student_lens: Tensor,
        targets: Dict[str, Tuple[Tensor, Tensor]],
        cut_ids: Optional[Sequence[str]] = None,
    ) -> Dict[str, Tensor]:
        """Unscaled losses, each summed over frames.

        Args:
            layers: the student's per-layer outputs, each (B, T, C).
            student_lens: (B,) student frames that have teacher targets (for
                noise-mixed cuts: the frames of the speech track).
            targets: ``codebook_indexes`` -> ((B, T', N) indexes, (B,) lengths) and/or
                ``teacher_embeddings`` -> ((B, T', D) floats, (B,) lengths).
            cut_ids: for error messages.

        Returns:
            ``codebook_loss`` and/or ``embedding_loss``.
        """
        h = layers[self.layer - 1]
        losses = {}
        if self.codebook is not None:
            idx, idx_lens = targets[INDEX_FIELD]
            t = align_teacher_frames(idx, idx_lens, student_lens, self.codebook_ratio, cut_ids)
            losses["codebook_loss"] = self.codebook(h[:, : t.size(1)], t)
        if self.embedding is not None:
            emb, emb_lens = targets[EMBEDDING_FIELD]
            r = self.embedding_ratio
            t = align_teacher_frames(emb, emb_lens, student_lens, r, cut_ids, pad_value=0.0)
            lens = aligned_lengths(emb_lens, student_lens, r)
            losses["embedding_loss"] = self.embedding(h[:, : t.size(1)], t, lens)
        return losses
