"""Sequence-level distillation: the teacher's N-best hypotheses as pseudo labels
(Kim & Rush 2016; for transducers: the student's RNN-T loss on each hypothesis).

The lists come from ``prepare.sh`` stage 8 (:mod:`mvq_kd.nbest`). Every cut gets a list
of weighted target transcripts whose weights sum to one:

* ``pseudo_labels="1best"``: the teacher's best hypothesis;
* ``pseudo_labels="nbest"``: every stored hypothesis, weighted ``uniform`` or by the
  teacher's posterior renormalised over the list (``scores``);
* a labeled cut keeps its transcript with weight ``ground_truth_weight`` and gives the
  hypotheses ``1 - ground_truth_weight`` (0: pseudo labels only, as in the paper; 1: the
  transcript alone, so that the pseudo labels only train the unlabeled cuts);
* an unlabeled cut (no transcript) trains on the hypotheses alone.

With ``pseudo_labels="none"`` a labeled cut has its transcript (weight 1) and an
unlabeled one no target (it can still serve the other distillation losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mvq_kd.cli import option
from mvq_kd.dataset import speech_track
from mvq_kd.fields import WEIGHTINGS, cut_nbest, nbest_weights

PSEUDO_LABELS = ("none", "1best", "nbest")


@dataclass
class SequenceKdConfig:
    """Attributes:
    pseudo_labels: ``none``, ``1best`` or ``nbest``.
    weighting: of the N-best hypotheses: ``uniform`` or ``scores``.
    ground_truth_weight: a labeled cut's transcript weight beside its hypotheses.
    """

    pseudo_labels: str = option(
        "none",
        "train on the teacher's 1-best or N-best of prepare.sh stage 8 (--train-manifest-dir "
        "data/<corpus>/nbest)",
        choices=PSEUDO_LABELS,
    )
    weighting: str = option(
        "uniform",
        "weights of the N-best hypotheses: uniform, or the teacher's posterior renormalised "
        "over the list",
        flag="--nbest-weighting",
        choices=WEIGHTINGS,
    )
    ground_truth_weight: float = option(
        0.0,
        "a labeled cut's transcript weight beside its pseudo labels (0: pseudo labels only; "
        "1: the transcript alone, the pseudo labels train only the --unlabeled-parts)",
    )

    def __post_init__(self) -> None:
        if self.pseudo_labels not in PSEUDO_LABELS:
            raise ValueError(f"pseudo_labels must be one of {PSEUDO_LABELS}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}")
        if not 0.0 <= self.ground_truth_weight <= 1.0:
            raise ValueError(
                f"ground_truth_weight must be in [0, 1], got {self.ground_truth_weight}"
            )

    @property
    def enabled(self) -> bool:
        return self.pseudo_labels != "none"


def cut_targets(cut, cfg: SequenceKdConfig) -> List[Tuple[str, float]]:
    """The weighted target transcripts of a cut (noise-mixed cuts: of their speech).

    Returns:
        ``(text, weight)`` pairs whose weights sum to one, or ``[]`` for an unlabeled
        cut without pseudo labels.
    """
    speech = speech_track(cut)
    sups = speech.supervisions
    text: Optional[str] = sups[0].text if sups else None
    if not cfg.enabled or (text is not None and cfg.ground_truth_weight == 1.0):
        return [] if text is None else [(text, 1.0)]
    nbest = cut_nbest(speech)
    if not nbest:
        raise ValueError(
            f"Cut {speech.id} has no teacher N-best list: run prepare.sh stage 8 (or "
            "local/compute_nbest.py) and train on its manifests (--train-manifest-dir "
            "data/<corpus>/nbest)"
        )
    if cfg.pseudo_labels == "1best":
        nbest = nbest[:1]
    weights = nbest_weights([h["score"] for h in nbest], cfg.weighting)
    hyp_weight = 1.0 if text is None else 1.0 - cfg.ground_truth_weight
    targets = [(h["text"], w * hyp_weight) for h, w in zip(nbest, weights)]
    if text is not None and cfg.ground_truth_weight > 0:
        targets.insert(0, (text, cfg.ground_truth_weight))
    return targets


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
    """The targets of the cuts (see :func:`cut_targets`)."""
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
