"""Bring your own corpus: import lhotse recording and supervision manifests.

Any corpus that lhotse can describe works: the manifests ``lhotse prepare <corpus>``
writes (``<prefix>_recordings_<part>.jsonl.gz``, ``<prefix>_supervisions_<part>.jsonl.gz``)
or a user's own. Each part is checked and written to the recipe's manifest folder under
the same names, so stages 2-8, ``train.py`` and ``decode.py`` run on it unchanged:

* transcripts are normalised (:func:`mvq_kd.data.text.normalize_text`, the original kept
  in ``custom["orig_text"]``); a supervision of a labeled part whose text is empty is an
  error naming it and its manifest;
* an audio file that is missing (or, with ``validate_audio="full"``, does not decode to
  the end) stops the stage naming recording, file and cause, or, with
  ``on_bad_audio="skip"``, is dropped with its supervisions and listed in
  ``<prefix>_bad_audio_<part>.txt``;
* supervisions without a recording, and recordings without a supervision, are counted
  and logged (lhotse's ``fix_manifests``), then the pair is validated.

Recordings holding several supervisions (long recordings with segments) are cut to
their supervisions in stage 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from lhotse import RecordingSet, SupervisionSet, load_manifest
from lhotse.qa import fix_manifests, validate_recordings_and_supervisions

from mvq_kd.data.librispeech import (
    BadAudioError,
    EmptyTranscriptError,
    check_audio,
    manifest_paths,
    write_part_manifests,
)
from mvq_kd.data.text import normalize_text
from mvq_kd.utils import Pathlike

_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")


def find_manifest(src_dir: Path, prefix: str, kind: str, part: str) -> Path:
    """The ``<prefix>_<kind>_<part>`` manifest in ``src_dir`` (any lhotse suffix)."""
    for suffix in _SUFFIXES:
        path = src_dir / f"{prefix}_{kind}_{part}{suffix}"
        if path.is_file():
            return path
    found = sorted(p.name for p in src_dir.glob(f"*_{kind}_*"))
    raise FileNotFoundError(
        f"No {kind} manifest of part '{part}' in {src_dir}: expected "
        f"{prefix}_{kind}_{part}.jsonl.gz (as `lhotse prepare` writes). "
        f"Found: {', '.join(found) or 'none'}; check --prefix and the --*-parts options."
    )


def _bad_audio(recordings: RecordingSet, validate_audio: str) -> Dict[str, str]:
    """recording id -> why its audio is unusable: a file source that does not exist, or
    (``validate_audio="full"``) audio that does not decode."""
    bad = {}
    for rec in recordings:
        missing = [s.source for s in rec.sources if s.type == "file" and not Path(s.source).is_file()]
        if missing:
            bad[rec.id] = f"Missing audio file {missing[0]} of recording '{rec.id}'"
        elif validate_audio == "full":
            try:
                check_audio(rec)
            except BadAudioError as e:
                bad[rec.id] = str(e)
    return bad


def import_part(
    src_dir: Path,
    prefix: str,
    part: str,
    labeled: bool = True,
    text_norm: str = "upper",
    on_bad_audio: str = "error",
    validate_audio: str = "full",
) -> Tuple[RecordingSet, SupervisionSet, List[str]]:
    """Load, normalise and check one part.

    Returns:
        recordings, supervisions, and the messages of dropped recordings.
    """
    rec_path = find_manifest(src_dir, prefix, "recordings", part)
    sup_path = find_manifest(src_dir, prefix, "supervisions", part)
    recordings, supervisions = load_manifest(rec_path), load_manifest(sup_path)
    if not isinstance(recordings, RecordingSet) or not isinstance(supervisions, SupervisionSet):
        raise ValueError(f"{rec_path} / {sup_path}: not a recording and a supervision manifest")

    bad = _bad_audio(recordings, validate_audio)
    if bad and on_bad_audio == "error":
        raise BadAudioError(
            f"{next(iter(bad.values()))} ({rec_path}; {len(bad)} bad in all). Fix the audio, "
            "or pass --skip-bad-audio true to drop such recordings (they are listed)."
        )
    for message in bad.values():
        logging.warning(f"Skipping: {message}")
    if bad:
        recordings = recordings.filter(lambda r: r.id not in bad).to_eager()
        supervisions = supervisions.filter(lambda s: s.recording_id not in bad).to_eager()

    def normalise(sup):
        if not labeled:
            sup.text = None
            return sup
        orig = sup.text or ""
        text = normalize_text(orig, text_norm)
        if not text:
            what = f"'{orig}' normalises to nothing" if orig else "Empty transcript"
            raise EmptyTranscriptError(
                f"{what} in supervision '{sup.id}' of {sup_path}. Give it a text, remove it, "
                "or list the part as unlabeled."
            )
        if text != orig:
            sup.custom = {**(sup.custom or {}), "orig_text": orig}
            sup.text = text
        return sup

    supervisions = SupervisionSet.from_segments([normalise(s) for s in supervisions])
    n_rec, n_sup = len(recordings), len(supervisions)
    recordings, supervisions = fix_manifests(recordings, supervisions)
    if len(recordings) != n_rec or len(supervisions) != n_sup:
        logging.warning(
            f"{part}: dropped {n_rec - len(recordings)} recording(s) without a supervision and "
            f"{n_sup - len(supervisions)} supervision(s) without a recording"
        )
    if len(supervisions) == 0:
        raise ValueError(f"Part '{part}' ({sup_path}) holds no supervision with a recording")
    validate_recordings_and_supervisions(recordings, supervisions)
    return recordings, supervisions, list(bad.values())


def import_lhotse_manifests(
    src_dir: Pathlike,
    parts: Iterable[str],
    output_dir: Pathlike,
    prefix: str,
    unlabeled_parts: Iterable[str] = (),
    text_norm: str = "upper",
    on_bad_audio: str = "error",
    validate_audio: str = "full",
) -> Dict[str, Tuple[RecordingSet, SupervisionSet]]:
    """Write ``<output_dir>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz`` per part.

    Args:
        src_dir: folder of the source manifests.
        parts: part names, e.g. ``train dev test``.
        output_dir: the recipe's manifest folder; parts already there are skipped.
        prefix: manifest name prefix, in the source and in the output.
        unlabeled_parts: parts whose supervisions lose their text.
        text_norm: ``upper`` (default) or ``none``.
        on_bad_audio: ``error`` or ``skip`` (recordings with bad audio).
        validate_audio: ``full`` (decode every recording) or ``header`` (files must exist).
    Returns:
        part -> (recordings, supervisions) for the parts written in this call.
    """
    src_dir, output_dir = Path(src_dir), Path(output_dir)
    unlabeled, result = set(unlabeled_parts), {}
    for part in parts:
        rec_path, sup_path = manifest_paths(output_dir, prefix, part)
        if rec_path.is_file() and sup_path.is_file():
            logging.info(f"{part}: manifests exist in {output_dir}, skipping")
            continue
        recs, sups, skipped = import_part(
            src_dir, prefix, part, part not in unlabeled, text_norm, on_bad_audio, validate_audio
        )
        write_part_manifests(output_dir, prefix, part, recs, sups, skipped)
        result[part] = (recs, sups)
    return result
