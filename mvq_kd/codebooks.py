"""Teacher embeddings -> codebook indexes in lhotse manifests (MVQ-KD data preparation).

Three steps, each a program in ``local/`` and a stage of ``prepare.sh``:

1. :func:`sample_embeddings`: embeddings of a random sample of training cuts, to train
   the quantizer on (``(F, D)`` float16 tensor file).
2. :func:`mvq_kd.quantization.train_quantizer` on them.
3. :func:`compute_codebook_indexes`: for every cut of a manifest, the teacher's
   embeddings are quantized and stored as the cut's custom field ``codebook_indexes``
   (a lhotse ``TemporalArray``, uint8 ``(T, N)``, the teacher's frame shift) in HDF5
   files; optionally the fp16 embeddings too (``teacher_embeddings``). Each cut also
   carries ``codebook_quantizer_id``, checked when training starts and when this step
   resumes or skips finished work.

Step 3 is sharded and resumable (:func:`mvq_kd.shards.map_shards`): each shard writes
its own HDF5 file, then its manifest.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from lhotse import CutSet
from lhotse.features.io import NumpyHdf5Writer
from tqdm import tqdm

from mvq_kd.dataset import collate_teacher_inputs
from mvq_kd.fields import EMBEDDING_FIELD, INDEX_FIELD, QUANTIZER_ID_FIELD
from mvq_kd.quantization import Quantizer
from mvq_kd.shards import Shard, map_shards, ordered_batches
from mvq_kd.teacher import Teacher, TeacherSpec
from mvq_kd.utils import atomic_path


def teacher_batches(
    teacher: Teacher, cuts: CutSet, max_duration: float
) -> Iterator[Tuple[List, torch.Tensor, torch.Tensor]]:
    """Batches of (cuts, inputs, input lengths) in the manifest order: audio resampled
    to 16 kHz for audio teachers, fbank for fbank teachers."""
    for batch in ordered_batches(cuts, max_duration):
        yield batch, *collate_teacher_inputs(CutSet.from_cuts(batch), teacher.input_type)


def sample_embeddings(
    spec: TeacherSpec,
    cuts: CutSet,
    num_cuts: int,
    out_path: Path,
    device: torch.device,
    max_duration: float = 100.0,
    seed: int = 0,
) -> Path:
    """Embeddings of ``num_cuts`` random cuts, saved as {"embeddings": (F, D) float16,
    "cut_ids", "frame_shift", "teacher"} to ``out_path`` (skipped if it exists)."""
    if out_path.is_file():
        logging.info(f"{out_path} exists, skipping")
        return out_path
    ids = sorted(c.id for c in cuts)
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(ids, size=min(num_cuts, len(ids)), replace=False).tolist())
    subset = cuts.filter(lambda c: c.id in chosen).to_eager()
    teacher = spec.build(device)
    chunks = []
    with tqdm(total=len(subset), desc="teacher embeddings", unit="cut") as bar:
        for batch, x, x_lens in teacher_batches(teacher, subset, max_duration):
            out = teacher.embed(x.to(device), x_lens.to(device))
            for i in range(len(batch)):
                chunks.append(out.embeddings[i, : int(out.lens[i])].half().cpu())
            bar.update(len(batch))
    emb = torch.cat(chunks)
    with atomic_path(out_path) as tmp:
        torch.save(
            {
                "embeddings": emb,
                "cut_ids": sorted(chosen),
                "frame_shift": teacher.frame_shift,
                "teacher": vars(spec),
            },
            tmp,
        )
    logging.info(
        f"Wrote {emb.shape[0]} frames of dim {emb.shape[1]} from {len(subset)} cuts to {out_path}"
    )
    return out_path


def compute_codebook_indexes(
    spec: TeacherSpec,
    quantizer_path: Path,
    cuts_path: Path,
    out_manifest: Path,
    device: torch.device,
    num_shards: int = 1,
    shards: Optional[Sequence[int]] = None,
    store_embeddings: bool = False,
    max_duration: float = 100.0,
) -> bool:
    """Compute (or resume) the codebook indexes of every cut of ``cuts_path``.

    Args:
        spec: the teacher.
        quantizer_path: a saved :class:`Quantizer` (its id goes into the cuts).
        cuts_path: input manifest (fbank cuts; audio teachers read the recordings).
        out_manifest: merged output manifest; shard files go next to it in
            ``<stem>-shards/`` (see :func:`mvq_kd.shards.map_shards`).
        num_shards: contiguous shards the manifest is split into.
        shards: the shards this process computes (default: all).
        store_embeddings: also store the fp16 embeddings (``teacher_embeddings``).
        max_duration: seconds of audio per teacher batch.

    Returns:
        True when every shard is done and ``out_manifest`` is written.
    """
    quantizer = Quantizer.load(quantizer_path).to(device)

    @functools.cache
    def teacher() -> Teacher:  # built on the first unfinished shard
        built = spec.build(device)
        if built.dim != quantizer.dim:
            raise ValueError(
                f"Teacher layer {spec.layer} of {spec.model} has dim {built.dim}, the "
                f"quantizer {quantizer_path} expects {quantizer.dim}"
            )
        return built

    def compute(cuts: CutSet, shard: Shard) -> None:
        _compute_shard(teacher(), quantizer, cuts, shard, store_embeddings, max_duration, device)

    def made_otherwise(cut) -> Optional[str]:
        qid = (cut.custom or {}).get(QUANTIZER_ID_FIELD)
        if qid != quantizer.id:
            return (
                f"holds the codebook indexes of quantizer {qid}, not of {quantizer_path} "
                f"({quantizer.id})"
            )
        return None

    done = map_shards(cuts_path, out_manifest, compute, num_shards, shards, made_otherwise)
    if done:
        logging.info(f"{out_manifest}: codebook indexes of quantizer {quantizer.id}")
    return done


def _compute_shard(
    teacher: Teacher,
    quantizer: Quantizer,
    cuts: CutSet,
    shard: Shard,
    store_embeddings: bool,
    max_duration: float,
    device: torch.device,
) -> None:
    qid = quantizer.id
    out_cuts = []
    h5_path, tmp_h5 = shard.file(".h5"), shard.file(".partial.h5")
    tmp_h5.unlink(missing_ok=True)
    with (
        NumpyHdf5Writer(tmp_h5) as writer,
        tqdm(total=len(cuts), desc=shard.desc, unit="cut") as bar,
    ):
        for batch, x, x_lens in teacher_batches(teacher, cuts, max_duration):
            out = teacher.embed(x.to(device), x_lens.to(device))
            arrays = {INDEX_FIELD: quantizer.encode(out.embeddings).cpu().numpy()}
            if store_embeddings:
                arrays[EMBEDDING_FIELD] = out.embeddings.half().cpu().numpy()
            for i, cut in enumerate(batch):
                n = int(out.lens[i])
                for field, values in arrays.items():
                    stored = writer.store_array(
                        f"{field}/{cut.id}",
                        values[i, :n],
                        frame_shift=teacher.frame_shift,
                        temporal_dim=0,
                        start=cut.start,
                    )
                    cut = cut.with_custom(field, stored)
                out_cuts.append(cut.with_custom(QUANTIZER_ID_FIELD, qid))
            bar.update(len(batch))
    # Point the arrays at the final file name, then publish: HDF5 file first, manifest
    # last (the manifest is the shard's completion marker).
    for cut in out_cuts:
        for field in (INDEX_FIELD, EMBEDDING_FIELD):
            arr = cut.custom.get(field)
            if arr is not None:
                arr.array.storage_path = str(h5_path)
    os.replace(tmp_h5, h5_path)
    with atomic_path(shard.manifest) as tmp:
        CutSet.from_cuts(out_cuts).to_file(tmp)
