#!/usr/bin/env python3
"""Training noise of the synthetic corpus (the MUSAN stand-in of egs/synth).

Writes coloured-noise FLAC files to --noise-dir (mvq_kd.data.synth.write_noise_set),
then their fbank cuts to <output-dir>/noise_cuts_all.jsonl.gz (skipped if done), to be
mixed into training batches with `train.py --musan <that manifest>`.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lhotse import CutSet, Recording, RecordingSet  # noqa: E402

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.fbank import compute_fbank  # noqa: E402
from mvq_kd.data.synth import write_noise_set  # noqa: E402
from mvq_kd.fields import cuts_path  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--noise-dir", type=Path, required=True, help="where the FLAC files go")
    p.add_argument("--output-dir", type=Path, required=True, help="fbank folder")
    p.add_argument("--num-files", type=int, default=200, help="noise files")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each file")
    p.add_argument("--num-jobs", type=int, default=2, help="feature extraction processes")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    if cuts_path(args.output_dir, "noise", "all").is_file():
        logging.info("Synthetic noise features exist, skipping")
        return
    paths = write_noise_set(args.noise_dir, args.num_files, args.seconds)
    recordings = RecordingSet.from_recordings(Recording.from_file(p) for p in paths)
    compute_fbank(
        CutSet.from_manifests(recordings=recordings),
        args.output_dir,
        part="all",
        prefix="noise",
        num_jobs=args.num_jobs,
    )
    logging.info(f"{len(paths)} noise files of {args.seconds:.0f} s -> {args.output_dir}")


if __name__ == "__main__":
    main()
