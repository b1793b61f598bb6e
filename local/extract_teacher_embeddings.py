#!/usr/bin/env python3
"""Teacher embeddings of a random sample of training cuts (to train the quantizer on).

Writes a torch file {"embeddings": (frames, dim) float16, "cut_ids", "frame_shift",
"teacher"}; skipped when it exists.

    local/extract_teacher_embeddings.py --cuts data/synth/fbank/synth_cuts_train.jsonl.gz \
        --teacher-model egs/synth/exp/teacher --teacher-epoch 10 --teacher-avg 3 \
        --teacher-layer 4 --num-cuts 1000 --output data/synth/mvq/embeddings.pt
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.codebooks import add_teacher_args, sample_embeddings, teacher_spec_from_args  # noqa: E402
from mvq_kd.dataset import load_cuts  # noqa: E402
from mvq_kd.trainer import pick_device  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cuts", type=Path, nargs="+", required=True, help="cut manifests to sample")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num-cuts", type=int, default=1000, help="cuts sampled (icefall: 1000)")
    p.add_argument("--max-duration", type=float, default=100.0, help="seconds per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto: cuda:0 if available, else cpu")
    add_teacher_args(p)
    args = p.parse_args()
    setup_logging()
    sample_embeddings(
        teacher_spec_from_args(args),
        load_cuts(args.cuts),
        args.num_cuts,
        args.output,
        pick_device(args.device),
        max_duration=args.max_duration,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
