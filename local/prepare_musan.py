#!/usr/bin/env python3
"""MUSAN noise for training-time mixing: manifests and fbank of 10 s windows.

Uses <dl-dir>/musan if present, else downloads it with lhotse (11 GB). Writes
<output-dir>/musan_cuts_all.jsonl.gz (skipped if done).
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lhotse import CutSet, combine  # noqa: E402
from lhotse.recipes import download_musan, prepare_musan  # noqa: E402

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.fbank import compute_fbank  # noqa: E402
from mvq_kd.fields import cuts_path  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument(
        "--dl-dir", type=Path, required=True, help="download folder (MUSAN goes to <dl-dir>/musan)"
    )
    p.add_argument("--manifest-dir", type=Path, required=True, help="folder of the manifests")
    p.add_argument("--output-dir", type=Path, required=True, help="fbank and cut manifests")
    p.add_argument("--num-jobs", type=int, default=2, help="feature extraction processes")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    if cuts_path(args.output_dir, "musan", "all").is_file():
        logging.info("MUSAN features exist, skipping")
        return
    corpus = args.dl_dir / "musan"
    if not corpus.is_dir():
        logging.info(f"Downloading MUSAN to {args.dl_dir}")
        download_musan(args.dl_dir)
    manifests = prepare_musan(corpus, args.manifest_dir, parts=("music", "speech", "noise"))
    recordings = combine(m["recordings"] for m in manifests.values())
    cuts = (
        CutSet.from_manifests(recordings=recordings)
        .filter(lambda c: c.duration > 5)
        .cut_into_windows(10.0)
        .filter(lambda c: c.duration > 5)
    )
    compute_fbank(cuts, args.output_dir, part="all", prefix="musan", num_jobs=args.num_jobs)


if __name__ == "__main__":
    main()
