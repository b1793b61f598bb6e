#!/usr/bin/env python3
"""Import the lhotse manifests of any corpus into the recipe (prepare.sh --corpus lhotse).

Reads <src-dir>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz (what
`lhotse prepare <corpus>` writes, or your own), normalises the transcripts, checks the
audio files and the manifests, and writes <output-dir>/<prefix>_*_<part>.jsonl.gz.

Example:
    local/import_lhotse_manifests.py --src-dir my_manifests --output-dir data/my/manifests \\
        --prefix my --parts train dev test
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.lhotse_corpus import import_lhotse_manifests  # noqa: E402
from mvq_kd.data.librispeech import (  # noqa: E402
    VALIDATE_AUDIO,
    BadAudioError,
    EmptyTranscriptError,
)
from mvq_kd.data.text import TEXT_NORMS  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--src-dir", type=Path, required=True, help="folder of the lhotse manifests")
    p.add_argument("--output-dir", type=Path, required=True, help="the recipe's manifest folder")
    p.add_argument("--prefix", required=True, help="manifest name prefix")
    p.add_argument("--parts", nargs="+", required=True, help="parts to import")
    p.add_argument("--unlabeled-parts", nargs="*", default=[], help="parts whose text is dropped")
    p.add_argument("--skip-bad-audio", action="store_true", help="drop and list missing audio")
    p.add_argument(
        "--validate-audio",
        default="full",
        choices=VALIDATE_AUDIO,
        help="full: decode every recording (finds truncated files); header: files must exist",
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
        import_lhotse_manifests(
            args.src_dir,
            args.parts,
            args.output_dir,
            args.prefix,
            unlabeled_parts=args.unlabeled_parts,
            text_norm=args.text_norm,
            on_bad_audio="skip" if args.skip_bad_audio else "error",
            validate_audio=args.validate_audio,
        )
    except (FileNotFoundError, BadAudioError, EmptyTranscriptError) as e:
        sys.exit(f"import_lhotse_manifests.py: {e}")


if __name__ == "__main__":
    main()
