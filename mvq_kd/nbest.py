"""Teacher N-best lists for sequence-level distillation (Kim & Rush 2016; seed 002).

A trained transducer (a ``train.py`` experiment, checkpoints averaged) decodes every cut
of a manifest with modified beam search and keeps its ``nbest`` best distinct
hypotheses with their log-probabilities. They are stored in a new manifest, in the
custom field ``nbest`` of each cut's first supervision::

    supervision.custom["nbest"] = [{"text": "THE CAT", "score": -1.73}, ...]  # best first

The supervision's ``text`` (the ground truth, ``None`` for unlabeled cuts) is never
changed; each cut also records the teacher and the search in ``cut.custom["nbest_teacher"]``.
The computation is sharded and resumable (:func:`mvq_kd.shards.map_shards`).

:func:`mvq_kd.fields.nbest_weights` turns a list's scores into per-hypothesis training weights that
sum to one (uniform, or the teacher's posterior renormalised over the list).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from lhotse import CutSet
from lhotse.utils import fastcopy
from tqdm import tqdm

from mvq_kd.checkpoint import load_model
from mvq_kd.cli import option
from mvq_kd.dataset import collate_teacher_inputs
from mvq_kd.decoding import modified_beam_search
from mvq_kd.fields import NBEST_FIELD, NBEST_TEACHER_FIELD
from mvq_kd.shards import Shard, map_shards, ordered_batches
from mvq_kd.utils import atomic_path


@dataclass
class NBestConfig:
    """The teacher and its search.

    Attributes:
        exp_dir: the teacher's ``train.py`` experiment folder.
        epoch: with ``avg``, decode the average of ``epoch-(epoch-avg+1).pt .. epoch-<epoch>.pt``.
        bpe_model: the teacher's BPE model (hypotheses are stored as text).
        avg: epochs averaged.
        beam: modified beam search beam.
        nbest: hypotheses kept per cut (at most ``beam``: the search keeps ``beam``).
        max_duration: seconds of audio per decoding batch.
    """

    exp_dir: Path = option(help="the teacher's train.py experiment folder", flag="--teacher-model")
    epoch: int = option(help="the teacher's last epoch", flag="--teacher-epoch")
    bpe_model: Path = option(help="the teacher's BPE model")
    avg: int = option(1, "epochs averaged", flag="--teacher-avg")
    beam: int = option(4, "modified beam search beam")
    nbest: int = option(4, "hypotheses kept per cut (<= beam)")
    max_duration: float = 100.0

    def __post_init__(self) -> None:
        if not 1 <= self.nbest <= self.beam:
            raise ValueError(f"nbest must be in 1..beam ({self.beam}), got {self.nbest}")

    def describe(self) -> Dict:
        d = asdict(self)
        d.pop("max_duration")
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def compute_nbest(
    cfg: NBestConfig,
    cuts_path: Path,
    out_manifest: Path,
    device: torch.device,
    num_shards: int = 1,
    shards: Optional[Sequence[int]] = None,
) -> bool:
    """Compute (or resume) the teacher's N-best list of every cut of ``cuts_path``.

    Args:
        cfg: the teacher and its search.
        cuts_path: input fbank cut manifest (labeled or unlabeled).
        out_manifest: merged output manifest (the input's cuts plus the lists).
        num_shards / shards: see :func:`mvq_kd.shards.map_shards`.

    Returns:
        True when every shard is done and ``out_manifest`` is written.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(cfg.bpe_model))

    @functools.cache
    def teacher():  # loaded on the first unfinished shard
        model = load_model(cfg.exp_dir, cfg.epoch, cfg.avg, device)[0]
        if model.config.vocab_size != sp.vocab_size():
            raise ValueError(
                f"BPE model {cfg.bpe_model} has {sp.vocab_size()} tokens, the teacher "
                f"{cfg.exp_dir} {model.config.vocab_size}: give the teacher's BPE model"
            )
        return model

    def compute(cuts: CutSet, shard: Shard) -> None:
        out_cuts = []
        with tqdm(total=len(cuts), desc=f"N-best {shard.desc}", unit="cut") as bar:
            for batch in ordered_batches(cuts, cfg.max_duration):
                for cut, hyps in zip(batch, _decode(teacher(), batch, cfg, device)):
                    out_cuts.append(_with_nbest(cut, hyps, sp, cfg))
                bar.update(len(batch))
        with atomic_path(shard.manifest) as tmp:
            CutSet.from_cuts(out_cuts).to_file(tmp)

    def made_otherwise(cut) -> Optional[str]:
        made = (cut.custom or {}).get(NBEST_TEACHER_FIELD)
        if made is not None and _norm(made) != _norm(cfg.describe()):
            return f"holds the N-best lists of {made}, not of {cfg.describe()}"
        return None

    done = map_shards(cuts_path, out_manifest, compute, num_shards, shards, made_otherwise)
    if done:
        logging.info(f"{out_manifest}: {cfg.nbest}-best lists of {cfg.exp_dir} (beam {cfg.beam})")
    return done


def _norm(described: Dict) -> Dict:
    """A teacher description with its paths resolved (a relative and an absolute path
    to the same teacher are the same teacher)."""
    paths = ("exp_dir", "bpe_model")
    return {k: str(Path(v).resolve()) if k in paths else v for k, v in described.items()}


@torch.no_grad()
def _decode(model, cuts: List, cfg: NBestConfig, device: torch.device):
    x, x_lens = collate_teacher_inputs(CutSet.from_cuts(cuts), "fbank")
    enc = model.encoder(x.to(device), x_lens.to(device))
    return modified_beam_search(model, enc.out, enc.out_lens, beam=cfg.beam, return_nbest=True)


def _with_nbest(cut, hyps, sp, cfg: NBestConfig):
    if not cut.supervisions:
        raise ValueError(
            f"Cut {cut.id} has no supervision to hold its N-best list: prepare the manifests "
            "with prepare.sh (unlabeled cuts carry a supervision without text)"
        )
    sup = cut.supervisions[0]
    nbest = [{"text": sp.decode(tokens), "score": round(score, 4)} for tokens, score in hyps]
    sup = fastcopy(sup, custom={**(sup.custom or {}), NBEST_FIELD: nbest[: cfg.nbest]})
    cut = fastcopy(cut, supervisions=[sup, *cut.supervisions[1:]])
    return cut.with_custom(NBEST_TEACHER_FIELD, cfg.describe())
