"""Sharded, resumable per-cut computations that write new cut manifests.

A manifest is split into ``num_shards`` contiguous shards. A process (a ``torchrun``
rank, or a machine given ``--shard-indexes``) computes its shards; each shard writes its
own manifest last and atomically (plus whatever data files it needs, before), so the
manifest marks the shard as finished: a killed run resumes by skipping finished shards
and recomputing unfinished ones. When every shard is done, the shard manifests are
merged, in the input order, into the output manifest (atomically too). Skipping or
merging finished work is only right for work of the same producer (teacher, quantizer,
search): ``map_shards`` asks the caller to check the first cut of each finished manifest.

Used by the codebook indexes of MVQ-KD (:mod:`mvq_kd.codebooks`) and the teacher
N-best lists of sequence-level KD (:mod:`mvq_kd.nbest`).
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from lhotse import CutSet, load_manifest_lazy
from lhotse.cut import Cut

from mvq_kd.fields import cuts_path
from mvq_kd.utils import atomic_path


@dataclass(frozen=True)
class Shard:
    """One shard of a manifest.

    Attributes:
        index: 0-based shard index.
        num_shards: shards of the manifest.
        stem: path prefix of the shard's files (e.g. ``<stem>.h5``).
    """

    index: int
    num_shards: int
    stem: Path

    def file(self, suffix: str) -> Path:
        """A file of the shard: ``<stem><suffix>``."""
        return self.stem.with_name(self.stem.name + suffix)

    @property
    def manifest(self) -> Path:
        """The shard's output manifest (write it last, e.g. with ``atomic_path``)."""
        return self.file(".jsonl.gz")

    @property
    def desc(self) -> str:
        return f"shard {self.index + 1}/{self.num_shards}"


def shard_of(out_manifest: Path, index: int, num_shards: int) -> Shard:
    """Shard ``index`` of ``out_manifest``: its files go to ``<stem>-shards/``."""
    name = out_manifest.name.replace(".jsonl.gz", "")
    return Shard(index, num_shards, out_manifest.parent / f"{name}-shards" / f"{name}.{index}")


def map_shards(
    cuts_path: Path,
    out_manifest: Path,
    compute: Callable[[CutSet, Shard], None],
    num_shards: int = 1,
    shards: Optional[Sequence[int]] = None,
    made_otherwise: Optional[Callable[[Cut], Optional[str]]] = None,
) -> bool:
    """Run ``compute(cuts, shard)`` on the unfinished ``shards`` of ``cuts_path``.

    Args:
        cuts_path: input ``.jsonl.gz`` cut manifest.
        out_manifest: the merged output manifest.
        compute: writes ``shard.manifest`` (last) from the shard's cuts.
        num_shards: contiguous shards the manifest is split into.
        shards: the shards this process computes (default: all).
        made_otherwise: given the first cut of a finished manifest (the output, or a
            shard), says how it was made otherwise than ``compute`` would make it (e.g.
            "holds the indexes of quantizer X, not of Y"), or None when it matches. A
            mismatch stops with a ``ValueError`` instead of skipping or merging the work.

    Returns:
        True when every shard is done and ``out_manifest`` is written.
    """

    def check(done: Path) -> None:
        first = next(iter(load_manifest_lazy(done)), None)
        why = made_otherwise(first) if made_otherwise and first is not None else None
        if why:
            shards_dir = shard_of(out_manifest, 0, 1).manifest.parent
            raise ValueError(
                f"{done} {why}: remove {out_manifest} and {shards_dir} (or write to another "
                "folder) to compute them again"
            )

    if out_manifest.is_file():
        check(out_manifest)
        logging.info(f"{out_manifest} exists, skipping")
        return True
    if not str(cuts_path).endswith(".jsonl.gz"):
        raise ValueError(f"{cuts_path}: expected a .jsonl.gz cut manifest")
    if not Path(cuts_path).is_file():
        raise FileNotFoundError(f"{cuts_path}: no such manifest (run the fbank stage first)")
    cuts = load_manifest_lazy(cuts_path)
    num_cuts = sum(1 for _ in cuts)
    bounds = np.linspace(0, num_cuts, num_shards + 1).round().astype(int)
    for index in range(num_shards) if shards is None else shards:
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index {index} outside 0..{num_shards - 1}")
        shard = shard_of(out_manifest, index, num_shards)
        if shard.manifest.is_file():
            check(shard.manifest)
            logging.info(f"{shard.desc} done already ({shard.manifest})")
            continue
        shard.manifest.parent.mkdir(parents=True, exist_ok=True)
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        compute(CutSet.from_cuts(itertools.islice(cuts, lo, hi)).to_eager(), shard)
    parts = [shard_of(out_manifest, s, num_shards).manifest for s in range(num_shards)]
    missing = [p for p in parts if not p.is_file()]
    if missing:
        logging.info(f"{len(missing)} shard(s) of {num_shards} still missing; not merging yet")
        return False
    with atomic_path(out_manifest) as tmp:
        CutSet.from_cuts(c for p in parts for c in load_manifest_lazy(p)).to_file(tmp)
    logging.info(f"Wrote {out_manifest} ({num_cuts} cuts)")
    return True


def ordered_batches(cuts: Iterable, max_duration: float) -> Iterator[List]:
    """Consecutive cuts, in the manifest order, of at most ``max_duration`` seconds per
    batch (a longer cut alone): a shard's batches do not depend on anything else."""
    batch: List = []
    total = 0.0
    for cut in cuts:
        if batch and total + cut.duration > max_duration:
            yield batch
            batch, total = [], 0.0
        batch.append(cut)
        total += cut.duration
    if batch:
        yield batch


def add_shard_args(parser) -> None:
    """The input, output, batch and shard options of the sharded ``local/`` programs:
    ``--manifest-dir``, ``--prefix``, ``--parts``, ``--output-dir``, ``--max-duration``,
    ``--device``, ``--num-shards``, ``--shard-indexes``."""
    parser.add_argument(
        "--manifest-dir", type=Path, required=True, help="folder of the input cut manifests"
    )
    parser.add_argument("--prefix", default="librispeech", help="cut manifest prefix")
    parser.add_argument("--parts", nargs="+", required=True, help="parts to compute")
    parser.add_argument(
        "--output-dir", type=Path, required=True, help="folder of the output manifests"
    )
    parser.add_argument("--max-duration", type=float, default=100.0, help="seconds per batch")
    parser.add_argument("--device", default="auto", help="auto: this rank's GPU, else the CPU")
    parser.add_argument(
        "--num-shards",
        type=int,
        default=0,
        help="shards per part (default: the torchrun world size, at least 1)",
    )
    parser.add_argument(
        "--shard-indexes",
        type=int,
        nargs="*",
        default=None,
        help="shards this process computes (default: all, or this torchrun rank's)",
    )


def shards_from_args(args) -> Tuple[int, List[int], int]:
    """(number of shards, this process's shards, its rank) from :func:`add_shard_args`'s
    options: under ``torchrun`` rank ``r`` of ``w`` takes shards ``r, r + w, ...``."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    num_shards = args.num_shards or world
    shards = args.shard_indexes
    if shards is None:
        shards = list(range(rank, num_shards, world))
    bad = [s for s in shards if not 0 <= s < num_shards]
    if bad:
        raise SystemExit(f"--shard-indexes {bad} outside 0..{num_shards - 1}")
    return num_shards, shards, rank


def part_manifests(args) -> List[Tuple[Path, Path]]:
    """(input, output) manifest of each of :func:`add_shard_args`'s ``--parts``; exits
    with a clear message, before any work, when an input is missing."""
    pairs = []
    for part in args.parts:
        src = cuts_path(args.manifest_dir, args.prefix, part)
        if not src.is_file():
            raise SystemExit(f"Missing manifest {src}: run the fbank stage of prepare.sh first")
        pairs.append((src, args.output_dir / src.name))
    return pairs
