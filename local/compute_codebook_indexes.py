#!/usr/bin/env python3
"""Codebook indexes of every cut of some manifests, stored in new manifests.

For each part, reads <manifest-dir>/<prefix>_cuts_<part>.jsonl.gz and writes
<output-dir>/<prefix>_cuts_<part>.jsonl.gz whose cuts carry `codebook_indexes`
(uint8 (T, N) TemporalArray in HDF5 files), `codebook_quantizer_id` and, with
--store-embeddings true, `teacher_embeddings` (fp16).

Sharded and resumable: finished shards are skipped after a kill. Under torchrun,
rank r computes shards r, r + world, ...; or give --shard-indexes yourself (several
machines). The shard manifests are merged when the last shard is done.

    local/compute_codebook_indexes.py --manifest-dir data/synth/fbank --prefix synth \
        --parts train --quantizer data/synth/mvq/quantizer.pt \
        --output-dir data/synth/mvq --teacher-model egs/synth/exp/teacher \
        --teacher-epoch 10 --teacher-avg 3 --teacher-layer 4
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.cli import add_config_args, config_from_args, make_parser, str2bool  # noqa: E402
from mvq_kd.codebooks import compute_codebook_indexes  # noqa: E402
from mvq_kd.device import pick_device  # noqa: E402
from mvq_kd.shards import add_shard_args, part_manifests, shards_from_args  # noqa: E402
from mvq_kd.teacher import TeacherSpec  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument(
        "--quantizer", type=Path, required=True, help="quantizer.pt of local/train_quantizer.py"
    )
    add_shard_args(p)
    p.add_argument(
        "--store-embeddings",
        type=str2bool,
        default=False,
        metavar="{true,false}",
        help="also store the fp16 teacher embeddings (L1/L2 baselines)",
    )
    add_config_args(p, TeacherSpec, "teacher", required=("model", "layer"))
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    num_shards, shards, rank = shards_from_args(args)
    spec = config_from_args(TeacherSpec, args)
    for src, out in part_manifests(args):
        compute_codebook_indexes(
            spec,
            args.quantizer,
            src,
            out,
            pick_device(args.device, rank),
            num_shards=num_shards,
            shards=shards,
            store_embeddings=args.store_embeddings,
            max_duration=args.max_duration,
        )


if __name__ == "__main__":
    main()
