"""Validated lhotse manifests for corpora in the LibriSpeech layout.

The manifests are the ones lhotse's ``prepare_librispeech`` writes (same ids, fields
and file names; ``tests/test_data.py`` checks the equality), with what that function
lacks for a recipe:

* a missing or unreadable audio file stops with an error naming the file, or, with
  ``on_bad_audio="skip"``, is skipped, counted, logged and listed in
  ``<prefix>_bad_audio_<part>.txt``;
* an empty transcript is rejected with its cut id, file and line;
* transcripts are normalised (:func:`mvq_kd.data.text.normalize_text`; the original is
  kept in the supervision's ``custom["orig_text"]`` when it differs);
* parts named in ``unlabeled_parts`` get supervisions without text, so no later
  stage can train on their transcripts by mistake;
* outputs are written atomically and finished parts are skipped.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.qa import fix_manifests, validate_recordings_and_supervisions

from mvq_kd.data.text import normalize_text
from mvq_kd.utils import Pathlike, atomic_path, write_lines


class BadAudioError(RuntimeError):
    """An audio file is missing, unreadable or empty."""


class EmptyTranscriptError(ValueError):
    """A transcript line has an utterance id but no text."""


@dataclass(frozen=True)
class _Line:
    utt_id: str
    text: str  # normalised
    orig_text: str  # as written
    audio: Path
    source: str  # "file:line" of the transcript, for error messages


def manifest_paths(output_dir: Path, prefix: str, part: str) -> Tuple[Path, Path]:
    """Paths of the recordings and supervisions manifests of ``part``."""
    return (
        output_dir / f"{prefix}_recordings_{part}.jsonl.gz",
        output_dir / f"{prefix}_supervisions_{part}.jsonl.gz",
    )


def _read_transcripts(part_dir: Path, labeled: bool, text_norm: str = "upper") -> List[_Line]:
    lines = []
    for trans in sorted(part_dir.rglob("*.trans.txt")):
        for lineno, raw in enumerate(trans.read_text().splitlines(), start=1):
            if not raw.strip():
                continue
            utt_id, _, orig = raw.strip().partition(" ")
            orig = orig.strip()
            text = normalize_text(orig, text_norm)
            if labeled and not text:
                what = f"'{orig}' normalises to nothing" if orig else "Empty transcript"
                raise EmptyTranscriptError(
                    f"{what} for cut '{utt_id}' at {trans}:{lineno}. "
                    "Add the text or remove the line (or list the part as unlabeled)."
                )
            audio = trans.parent / f"{utt_id}.flac"
            lines.append(_Line(utt_id, text, orig, audio, f"{trans}:{lineno}"))
    return lines


VALIDATE_AUDIO = ("header", "full")


def audio_error_cause(e: Exception) -> str:
    """The one useful line of an audio loading error (lhotse lists every backend it
    tried: the first one's message is the cause)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Exception #0"):
            return line.rsplit(">: ", 1)[-1]
    return lines[0] if lines else type(e).__name__


def check_audio(rec: Recording) -> None:
    """Decode every sample of ``rec`` (a header can be intact in a truncated file).

    Raises:
        BadAudioError: naming the recording, its file and the cause.
    """
    try:
        rec.load_audio()
    except Exception as e:  # soundfile/audioread/lhotse raise many types
        sources = ", ".join(s.source for s in rec.sources)
        raise BadAudioError(
            f"Cannot decode audio of '{rec.id}' ({sources}): {audio_error_cause(e)}"
        ) from None


def _load_recording(line: _Line, validate_audio: str = "header") -> Recording:
    if not line.audio.is_file():
        raise BadAudioError(f"Missing audio file {line.audio} (listed at {line.source})")
    try:
        rec = Recording.from_file(line.audio, recording_id=line.utt_id)
    except Exception as e:  # soundfile/audioread raise many types
        raise BadAudioError(f"Cannot read audio file {line.audio}: {audio_error_cause(e)}") from e
    if rec.num_samples == 0:
        raise BadAudioError(f"Audio file {line.audio} has no samples")
    if validate_audio == "full":
        check_audio(rec)
    return rec


def _load_or_none(
    line: _Line, validate_audio: str = "header"
) -> Tuple[_Line, Optional[Recording], Optional[str]]:
    try:
        return line, _load_recording(line, validate_audio), None
    except BadAudioError as e:
        return line, None, str(e)


def prepare_part(
    part_dir: Path,
    labeled: bool = True,
    on_bad_audio: str = "error",
    num_jobs: int = 1,
    text_norm: str = "upper",
    validate_audio: str = "header",
) -> Tuple[RecordingSet, SupervisionSet, List[str]]:
    """Build the manifests of one LibriSpeech-layout part folder.

    ``text_norm`` is the transcript normalisation (``upper`` or ``none``);
    ``validate_audio`` reads each file's ``header`` or decodes it in ``full``. Audio
    files without a transcript line are counted and logged (see :func:`untranscribed`).

    Returns:
        recordings, supervisions, and the error messages of skipped files.
    """
    if on_bad_audio not in ("error", "skip"):
        raise ValueError(f"on_bad_audio must be 'error' or 'skip', not {on_bad_audio!r}")
    if validate_audio not in VALIDATE_AUDIO:
        raise ValueError(f"validate_audio must be one of {VALIDATE_AUDIO}, not {validate_audio!r}")
    lines = _read_transcripts(part_dir, labeled, text_norm)
    if not lines:
        raise ValueError(f"No '*.trans.txt' transcripts found under {part_dir}")
    recordings, supervisions, skipped = [], [], []
    with ThreadPoolExecutor(num_jobs) as ex:
        for line, rec, err in ex.map(lambda x: _load_or_none(x, validate_audio), lines):
            if rec is None:
                if on_bad_audio == "error":
                    raise BadAudioError(
                        f"{err}. Fix or remove the file, or pass --skip-bad-audio to "
                        "skip such files (they are counted and listed)."
                    )
                logging.warning(f"Skipping: {err}")
                skipped.append(err)
                continue
            recordings.append(rec)
            supervisions.append(
                SupervisionSegment(
                    id=line.utt_id,
                    recording_id=line.utt_id,
                    start=0.0,
                    duration=rec.duration,
                    channel=0,
                    language="English",
                    speaker=re.sub(r"-.*", "", line.utt_id),
                    text=line.text if labeled else None,
                    custom=(
                        {"orig_text": line.orig_text}
                        if labeled and line.orig_text != line.text
                        else None
                    ),
                )
            )
    recording_set, supervision_set = fix_manifests(
        RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    )
    validate_recordings_and_supervisions(recording_set, supervision_set)
    return recording_set, supervision_set, skipped


def untranscribed_audio(part_dir: Path) -> List[Path]:
    """Audio files of ``part_dir`` that no transcript line names (they are not used)."""
    listed = set()
    for trans in part_dir.rglob("*.trans.txt"):
        listed.update(line.split(" ", 1)[0] for line in trans.read_text().split("\n") if line)
    return sorted(p for p in part_dir.rglob("*.flac") if p.stem not in listed)


def prepare_librispeech_manifests(
    corpus_dir: Pathlike,
    parts: Iterable[str],
    output_dir: Pathlike,
    prefix: str = "librispeech",
    unlabeled_parts: Iterable[str] = (),
    on_bad_audio: str = "error",
    num_jobs: int = 1,
    text_norm: str = "upper",
    validate_audio: str = "header",
) -> Dict[str, Tuple[RecordingSet, SupervisionSet]]:
    """Write ``<prefix>_{recordings,supervisions}_<part>.jsonl.gz`` for each part.

    Args:
        corpus_dir: the folder holding the part folders (e.g. ``download/LibriSpeech``).
        parts: part folder names, e.g. ``train-clean-100`` or ``test-other``.
        output_dir: manifest folder; parts whose two manifests exist are skipped.
        prefix: manifest file name prefix.
        unlabeled_parts: parts whose supervisions get no text.
        on_bad_audio: ``"error"`` (default) or ``"skip"`` (count, log and list).
        num_jobs: threads that read audio headers.
        text_norm: transcript normalisation, ``upper`` (default) or ``none``.
        validate_audio: ``header`` (read each file's header) or ``full`` (decode it).
    Returns:
        part -> (recordings, supervisions) for the parts prepared in this call.
    """
    corpus_dir, output_dir = Path(corpus_dir), Path(output_dir)
    unlabeled = set(unlabeled_parts)
    result = {}
    for part in parts:
        rec_path, sup_path = manifest_paths(output_dir, prefix, part)
        if rec_path.is_file() and sup_path.is_file():
            logging.info(f"{part}: manifests exist in {output_dir}, skipping")
            continue
        part_dir = corpus_dir / part
        if not part_dir.is_dir():
            raise FileNotFoundError(f"No such part folder: {part_dir}")
        logging.info(f"{part}: preparing manifests from {part_dir}")
        recs, sups, skipped = prepare_part(
            part_dir,
            labeled=part not in unlabeled,
            on_bad_audio=on_bad_audio,
            num_jobs=num_jobs,
            text_norm=text_norm,
            validate_audio=validate_audio,
        )
        unused = untranscribed_audio(part_dir)
        if unused:
            unused_list = output_dir / f"{prefix}_no_transcript_{part}.txt"
            write_lines(unused_list, map(str, unused))
            logging.warning(
                f"{part}: {len(unused)} audio file(s) have no transcript line and are not "
                f"used, see {unused_list}"
            )
        write_part_manifests(output_dir, prefix, part, recs, sups, skipped)
        result[part] = (recs, sups)
    return result


def write_part_manifests(
    output_dir: Path,
    prefix: str,
    part: str,
    recordings: RecordingSet,
    supervisions: SupervisionSet,
    skipped: List[str],
) -> None:
    """Write a part's manifests (:func:`manifest_paths`) and, when files were skipped,
    ``<prefix>_bad_audio_<part>.txt`` listing why. Supervisions first, recordings last:
    the recordings file marks the part as done."""
    rec_path, sup_path = manifest_paths(output_dir, prefix, part)
    if skipped:
        bad_list = output_dir / f"{prefix}_bad_audio_{part}.txt"
        write_lines(bad_list, skipped)
        logging.warning(f"{part}: skipped {len(skipped)} bad audio file(s), see {bad_list}")
    with atomic_path(sup_path) as tmp:
        supervisions.to_file(tmp)
    with atomic_path(rec_path) as tmp:
        recordings.to_file(tmp)
    hours = sum(r.duration for r in recordings) / 3600
    logging.info(
        f"{part}: {len(recordings)} recordings, {len(supervisions)} supervisions, "
        f"{hours:.2f} h -> {rec_path}"
    )
