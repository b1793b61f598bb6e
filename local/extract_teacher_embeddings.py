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

from mvq_kd.cli import add_config_args, config_from_args, make_parser  # noqa: E402
from mvq_kd.codebooks import sample_embeddings  # noqa: E402
from mvq_kd.dataset import load_cuts  # noqa: E402
from mvq_kd.device import pick_device  # noqa: E402
from mvq_kd.teacher import TeacherSpec  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--cuts", type=Path, nargs="+", required=True, help="cut manifests to sample")
    p.add_argument("--output", type=Path, required=True, help="the (F, D) embeddings file")
    p.add_argument("--num-cuts", type=int, default=1000, help="cuts sampled (icefall: 1000)")
    p.add_argument("--max-duration", type=float, default=100.0, help="seconds per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--device", default="auto", help="auto: cuda:0 if available, else cpu")
    add_config_args(p, TeacherSpec, "teacher", required=("model", "layer"))
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    sample_embeddings(
        config_from_args(TeacherSpec, args),
        load_cuts(args.cuts),
        args.num_cuts,
        args.output,
        pick_device(args.device),
        max_duration=args.max_duration,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
