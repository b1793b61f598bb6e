"""80-dim log-mel filter-bank features stored with lhotse's ``LilcomChunkyWriter``.

Each part becomes ``<prefix>_cuts_<part>.jsonl.gz`` (the completion marker) plus a
folder ``<prefix>_feats_<part>/`` of ``feats-<shard>.lca`` archives. Shards are
computed in parallel processes into a temporary folder that is renamed only when
every shard has finished, so an interrupted stage leaves nothing that looks done.
Audio at another sampling rate is resampled to 16 kHz (logged once per part with the
count); a cut of several channels is an error (the recipe takes mono audio). A cut whose
audio cannot be decoded stops the stage with one line naming the cut, its file and the
cause, or, with ``skip_bad_audio``, is dropped, counted and listed in
``<prefix>_bad_audio_<part>.txt`` beside the features.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.utils import fastcopy

from mvq_kd.data.librispeech import BadAudioError, audio_error_cause
from mvq_kd.fields import SAMPLE_RATE, cuts_path
from mvq_kd.utils import Pathlike, atomic_path, write_lines


def _extract_shard(args: Tuple[CutSet, Path, int, bool]) -> Tuple[CutSet, List[str]]:
    """Worker: features of one shard; returns the cuts and the messages of bad cuts
    (skipped when ``skip_bad``, else the first one raises :class:`BadAudioError`)."""
    cuts, storage_path, num_mel_bins, skip_bad = args
    import torch

    torch.set_num_threads(1)  # one process per core
    extractor = Fbank(FbankConfig(num_mel_bins=num_mel_bins))
    out, bad = [], []
    with LilcomChunkyWriter(storage_path) as writer:
        for cut in cuts:
            try:
                out.append(cut.compute_and_store_features(extractor, writer))
            except Exception as e:
                sources = ", ".join(s.source for s in cut.recording.sources)
                message = (
                    f"Cannot compute features of cut '{cut.id}' (audio: {sources}): "
                    f"{audio_error_cause(e)}"
                )
                if not skip_bad:
                    raise BadAudioError(message) from None
                bad.append(message)
    return CutSet.from_cuts(out), bad


def to_mono_16k(cuts: CutSet, part: str) -> CutSet:
    """``cuts`` at 16 kHz (lhotse resamples on load); an error for a multi-channel cut."""
    for c in cuts:
        if c.num_channels != 1:
            sources = ", ".join(s.source for s in c.recording.sources)
            raise BadAudioError(
                f"Cut '{c.id}' of {part} has {c.num_channels} channels (audio: {sources}): the "
                "recipe takes mono audio; downmix it (e.g. sox in.wav -c 1 out.wav) or give "
                "each supervision its channel"
            )
    rates = Counter(c.sampling_rate for c in cuts if c.sampling_rate != SAMPLE_RATE)
    if not rates:
        return cuts
    found = ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items()))
    logging.info(f"{part}: resampling {sum(rates.values())} cuts to {SAMPLE_RATE} Hz ({found})")
    return CutSet.from_cuts(
        c if c.sampling_rate == SAMPLE_RATE else c.resample(SAMPLE_RATE) for c in cuts
    )


def compute_fbank(
    cuts: CutSet,
    output_dir: Pathlike,
    part: str,
    prefix: str,
    num_jobs: int = 2,
    speed_perturb: Sequence[float] = (),
    num_mel_bins: int = 80,
    skip_bad_audio: bool = False,
) -> Optional[CutSet]:
    """Compute fbank features of one part and write its cut manifest.

    Args:
        cuts: the part's cuts without features (e.g. ``CutSet.from_manifests``).
        output_dir: feature folder (e.g. ``data/fbank``).
        part, prefix: used in the output names.
        num_jobs: parallel processes (one feature archive each).
        speed_perturb: extra speed factors, e.g. ``(0.9, 1.1)``: the cut set is the
            union of the original and the perturbed copies (ids get ``_sp0.9``...).
        num_mel_bins: feature dimension.
        skip_bad_audio: drop cuts whose audio does not decode, listed in
            ``<output_dir>/<prefix>_bad_audio_<part>.txt`` (default: stop at the first).
    Returns:
        The cuts with features, or ``None`` when the part was already done.
    """
    from tqdm import tqdm

    output_dir = Path(output_dir)
    manifest = cuts_path(output_dir, prefix, part)
    if manifest.is_file():
        logging.info(f"{part}: features exist ({manifest}), skipping")
        return None
    cuts = to_mono_16k(cuts.to_eager(), part)
    cuts = CutSet.from_cuts(
        [c for c in cuts] + [c.perturb_speed(f) for f in speed_perturb for c in cuts]
    )

    final_dir = output_dir / f"{prefix}_feats_{part}"
    tmp_dir = output_dir / f".tmp_{prefix}_feats_{part}"
    for d in (tmp_dir, final_dir):  # leftovers of an interrupted run
        shutil.rmtree(d, ignore_errors=True)
    tmp_dir.mkdir(parents=True)

    num_jobs = max(1, min(num_jobs, len(cuts)))
    shards = cuts.split(num_jobs) if num_jobs > 1 else [cuts]
    jobs = [
        (shard, tmp_dir / f"feats-{i}.lca", num_mel_bins, skip_bad_audio)
        for i, shard in enumerate(shards)
    ]
    logging.info(f"{part}: computing fbank of {len(cuts)} cuts with {num_jobs} process(es)")
    if num_jobs == 1:
        results = [_extract_shard(jobs[0])]
    else:
        with ProcessPoolExecutor(num_jobs) as ex:
            results = list(tqdm(ex.map(_extract_shard, jobs), total=len(jobs), desc=part))
    bad = [message for _, shard_bad in results for message in shard_bad]
    if bad:
        bad_list = output_dir / f"{prefix}_bad_audio_{part}.txt"
        write_lines(bad_list, bad)
        logging.warning(f"{part}: skipped {len(bad)} cut(s) whose audio does not decode, see {bad_list}")
    tmp_dir.rename(final_dir)

    def relocate(cut):
        name = Path(cut.features.storage_path).name
        return fastcopy(cut, features=fastcopy(cut.features, storage_path=str(final_dir / name)))

    done = CutSet.from_cuts(relocate(c) for shard, _ in results for c in shard)
    if len(done) == 0 and bad:
        raise BadAudioError(f"{part}: no cut left with decodable audio (see {bad_list})")
    with atomic_path(manifest) as tmp:
        done.to_file(tmp)
    hours = sum(c.duration for c in done) / 3600
    logging.info(f"{part}: {len(done)} cuts, {hours:.2f} h of features -> {manifest}")
    return done
