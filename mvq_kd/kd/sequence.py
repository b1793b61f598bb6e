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
from typing import List, Optional, Tuple

from mvq_kd.dataset import speech_track
from mvq_kd.nbest import WEIGHTINGS, cut_nbest, nbest_weights

PSEUDO_LABELS = ("none", "1best", "nbest")


@dataclass
class SequenceKdConfig:
    """Attributes:
    pseudo_labels: ``none``, ``1best`` or ``nbest``.
    weighting: of the N-best hypotheses: ``uniform`` or ``scores``.
    ground_truth_weight: a labeled cut's transcript weight beside its hypotheses.
    """

    pseudo_labels: str = "none"
    weighting: str = "uniform"
    ground_truth_weight: float = 0.0

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
