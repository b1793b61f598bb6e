#!/usr/bin/env python3
"""Make LibriSpeech parts present in <dl-dir>/LibriSpeech, downloading only missing ones.

Example:
    local/download_librispeech.py --dl-dir download --parts dev-clean test-clean
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.download import LIBRISPEECH_URL, DownloadError, download_librispeech_part  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--dl-dir", type=Path, required=True, help="download folder")
    p.add_argument("--parts", nargs="+", required=True, help="e.g. dev-clean test-clean")
    p.add_argument("--base-url", default=LIBRISPEECH_URL, help="folder URL of the archives")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    for part in args.parts:
        try:
            download_librispeech_part(args.dl_dir, part, args.base_url)
        except DownloadError as e:
            sys.exit(f"download_librispeech.py: {e}")


if __name__ == "__main__":
    main()
