#!/usr/bin/env python3
"""Compute 80-dim fbank features (lhotse Fbank, LilcomChunkyWriter) for manifest parts.

Reads <manifest-dir>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz and writes
<output-dir>/<prefix>_cuts_<part>.jsonl.gz. Finished parts are skipped. Recordings that
hold several supervisions, or one that does not span them, are cut to their supervisions.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lhotse import CutSet, load_manifest  # noqa: E402

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.fbank import compute_fbank  # noqa: E402
from mvq_kd.data.librispeech import BadAudioError, manifest_paths  # noqa: E402
from mvq_kd.fields import cuts_path  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument(
        "--manifest-dir", type=Path, required=True, help="recording and supervision manifests"
    )
    p.add_argument("--output-dir", type=Path, required=True, help="fbank and cut manifests")
    p.add_argument("--parts", nargs="+", required=True, help="parts to compute")
    p.add_argument("--prefix", default="librispeech", help="manifest name prefix")
    p.add_argument(
        "--speed-perturb",
        type=float,
        nargs="*",
        default=[],
        help="extra speed factors for these parts, e.g. 0.9 1.1",
    )
    p.add_argument("--num-mel-bins", type=int, default=80, help="fbank bins")
    p.add_argument("--num-jobs", type=int, default=2, help="feature extraction processes")
    p.add_argument(
        "--skip-bad-audio",
        action="store_true",
        help="drop cuts whose audio does not decode (listed in <prefix>_bad_audio_<part>.txt)",
    )
    return p


def _one_full_supervision(cut) -> bool:
    if len(cut.supervisions) != 1:
        return False
    sup = cut.supervisions[0]
    return sup.start <= 0.01 and sup.end >= cut.duration - 0.01


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    for part in args.parts:
        if cuts_path(args.output_dir, args.prefix, part).is_file():
            print(f"{part}: features exist, skipping", flush=True)
            continue
        rec_path, sup_path = manifest_paths(args.manifest_dir, args.prefix, part)
        for path in (rec_path, sup_path):
            if not path.is_file():
                sys.exit(f"Missing manifest {path}: run the manifest stage first")
        cuts = CutSet.from_manifests(load_manifest(rec_path), load_manifest(sup_path))
        if not all(_one_full_supervision(c) for c in cuts):
            print(f"{part}: recordings with segments, cutting them to their supervisions")
            cuts = CutSet.from_cuts(cuts.trim_to_supervisions(keep_overlapping=False)).to_eager()
        try:
            compute_fbank(
                cuts,
                args.output_dir,
                part=part,
                prefix=args.prefix,
                num_jobs=args.num_jobs,
                speed_perturb=args.speed_perturb,
                num_mel_bins=args.num_mel_bins,
                skip_bad_audio=args.skip_bad_audio,
            )
        except BadAudioError as e:
            decode_error = "Cannot compute features" in str(e) and not args.skip_bad_audio
            hint = " (--skip-bad-audio true drops such cuts)" if decode_error else ""
            sys.exit(f"compute_fbank.py: {e}{hint}")


if __name__ == "__main__":
    main()
