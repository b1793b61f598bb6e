#!/usr/bin/env python3
"""Compute 80-dim fbank features (lhotse Fbank, LilcomChunkyWriter) for manifest parts.

Reads <manifest-dir>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz and writes
<output-dir>/<prefix>_cuts_<part>.jsonl.gz. Finished parts are skipped.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lhotse import CutSet, load_manifest  # noqa: E402

from mvq_kd.data.fbank import compute_fbank, cuts_path  # noqa: E402
from mvq_kd.data.librispeech import manifest_paths  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--prefix", default="librispeech")
    p.add_argument(
        "--speed-perturb",
        type=float,
        nargs="*",
        default=[],
        help="extra speed factors for these parts, e.g. 0.9 1.1",
    )
    p.add_argument("--num-mel-bins", type=int, default=80)
    p.add_argument("--num-jobs", type=int, default=2, help="feature extraction processes")
    args = p.parse_args()
    setup_logging()
    for part in args.parts:
        if cuts_path(args.output_dir, args.prefix, part).is_file():
            print(f"{part}: features exist, skipping", flush=True)
            continue
        rec_path, sup_path = manifest_paths(args.manifest_dir, args.prefix, part)
        for path in (rec_path, sup_path):
            if not path.is_file():
                sys.exit(f"Missing manifest {path}: run the manifest stage first")
        compute_fbank(
            CutSet.from_manifests(load_manifest(rec_path), load_manifest(sup_path)),
            args.output_dir,
            part=part,
            prefix=args.prefix,
            num_jobs=args.num_jobs,
            speed_perturb=args.speed_perturb,
            num_mel_bins=args.num_mel_bins,
        )


if __name__ == "__main__":
    main()
