"""What the cut manifests carry, for the modules that write and those that read it.

The lowest layer of the package (no ``mvq_kd`` imports): the sample rate of the audio,
the custom fields of the distillation targets that ``prepare.sh`` stages 7 and 8 store
with each cut (codebook indexes, teacher embeddings, N-best lists), and the helpers
that read them back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

SAMPLE_RATE = 16000  # Hz: the corpora's audio and the teachers' input


def cuts_path(folder: Path, prefix: str, part: str) -> Path:
    """The cut manifest of one part: ``<folder>/<prefix>_cuts_<part>.jsonl.gz``."""
    return Path(folder) / f"{prefix}_cuts_{part}.jsonl.gz"


# Frame-level targets (stage 7, :mod:`mvq_kd.codebooks`): temporal array fields of a cut.
INDEX_FIELD = "codebook_indexes"  # (T', num_codebooks) uint8
EMBEDDING_FIELD = "teacher_embeddings"  # (T', D) float16
QUANTIZER_ID_FIELD = "codebook_quantizer_id"  # the quantizer that made INDEX_FIELD

# Sequence-level targets (stage 8, :mod:`mvq_kd.nbest`).
NBEST_FIELD = "nbest"  # supervision custom field: [{"text": ..., "score": ...}, ...]
NBEST_TEACHER_FIELD = "nbest_teacher"  # cut custom field: the teacher and its search
WEIGHTINGS = ("uniform", "scores")


def nbest_weights(scores: Sequence[float], weighting: str = "uniform") -> List[float]:
    """Training weights of an N-best list, summing to one.

    Args:
        scores: the hypotheses' teacher log-probabilities.
        weighting: ``uniform`` (1/N each) or ``scores`` (``softmax(scores)``: the
            teacher's posterior renormalised over the list).
    """
    if not scores:
        raise ValueError("an N-best list needs at least one hypothesis")
    if weighting == "uniform":
        return [1.0 / len(scores)] * len(scores)
    if weighting != "scores":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    top = max(scores)
    exp = [math.exp(s - top) for s in scores]
    total = sum(exp)
    return [e / total for e in exp]


def cut_nbest(cut) -> Optional[List[Dict]]:
    """The N-best list stored with a cut (its first supervision), or None."""
    sups = cut.supervisions
    if not sups or not sups[0].custom:
        return None
    return sups[0].custom.get(NBEST_FIELD)


def check_quantizer_ids(cuts, expected_id: Optional[str] = None) -> Optional[str]:
    """The quantizer id shared by the cuts (an iterable of cuts) that carry codebook indexes.

    Raises ``ValueError`` naming the cuts when two quantizers made the indexes of one
    training set, or when the id differs from ``expected_id`` (e.g. that of the
    quantizer file a recipe names). Returns None when no cut has indexes.
    """
    seen: dict = {}
    for cut in cuts:
        custom = cut.custom or {}
        if INDEX_FIELD not in custom:
            continue
        qid = custom.get(QUANTIZER_ID_FIELD)
        if qid is None:
            raise ValueError(
                f"Cut {cut.id} has {INDEX_FIELD} but no {QUANTIZER_ID_FIELD}: recompute its "
                "indexes with local/compute_codebook_indexes.py"
            )
        seen.setdefault(qid, cut.id)
        if len(seen) > 1:
            (a, ca), (b, cb) = list(seen.items())[:2]
            raise ValueError(
                f"Codebook indexes from two quantizers in one training set: cut {ca} has "
                f"quantizer {a}, cut {cb} has {b}; recompute them with one quantizer"
            )
    qid = next(iter(seen), None)
    if expected_id is not None and qid is not None and qid != expected_id:
        raise ValueError(
            f"The codebook indexes were made by quantizer {qid} (e.g. cut {seen[qid]}), "
            f"not by the expected quantizer {expected_id}"
        )
    return qid
