#!/usr/bin/env python3
"""Prepare lhotse manifests for a corpus in the LibriSpeech layout (real or synthetic).

Writes <output-dir>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz. Parts already
prepared are skipped. A missing or unreadable audio file stops with its name, unless
--skip-bad-audio is given (then it is skipped, counted and listed in
<prefix>_bad_audio_<part>.txt). Empty transcripts are rejected with their cut id.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.librispeech import (  # noqa: E402
    VALIDATE_AUDIO,
    BadAudioError,
    EmptyTranscriptError,
    prepare_librispeech_manifests,
)
from mvq_kd.data.text import TEXT_NORMS  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--corpus-dir", type=Path, required=True, help="folder of the part folders")
    p.add_argument("--output-dir", type=Path, required=True, help="folder of the manifests")
    p.add_argument("--parts", nargs="+", required=True, help="e.g. train-clean-100 test-clean")
    p.add_argument("--prefix", default="librispeech", help="manifest name prefix")
    p.add_argument(
        "--unlabeled-parts", nargs="*", default=[], help="parts whose transcripts are dropped"
    )
    p.add_argument("--skip-bad-audio", action="store_true", help="skip and count bad files")
    p.add_argument("--num-jobs", type=int, default=4, help="threads reading audio headers")
    p.add_argument(
        "--validate-audio",
        default="header",
        choices=VALIDATE_AUDIO,
        help="header: read each file's header; full: decode every file (finds truncated ones)",
    )
    p.add_argument(
        "--text-norm",
        default="upper",
        choices=TEXT_NORMS,
        help="upper: upper case, punctuation removed (icefall's LibriSpeech); none: as is",
    )
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        prepare_librispeech_manifests(
            args.corpus_dir,
            args.parts,
            args.output_dir,
            prefix=args.prefix,
            unlabeled_parts=args.unlabeled_parts,
            on_bad_audio="skip" if args.skip_bad_audio else "error",
            num_jobs=args.num_jobs,
            text_norm=args.text_norm,
            validate_audio=args.validate_audio,
        )
    except (FileNotFoundError, BadAudioError, EmptyTranscriptError) as e:
        sys.exit(f"prepare_manifests.py: {e}")


if __name__ == "__main__":
    main()
