#!/usr/bin/env python3
"""The teacher's N-best lists of every cut of some manifests (sequence-level KD).

For each part, reads <manifest-dir>/<prefix>_cuts_<part>.jsonl.gz and writes
<output-dir>/<prefix>_cuts_<part>.jsonl.gz: the same cuts, whose first supervision
carries `nbest` (the teacher's best hypotheses, modified beam search, with their
log-probabilities, best first). Transcripts are left as they are (None for unlabeled
parts): the lists sit beside them.

Sharded and resumable like local/compute_codebook_indexes.py: finished shards are
skipped after a kill; under torchrun rank r computes shards r, r + world, ...

    local/compute_nbest.py --manifest-dir data/synth/fbank --prefix synth \
        --parts train train-unlabeled --output-dir data/synth/nbest \
        --teacher-model egs/synth/exp/teacher --teacher-epoch 10 --teacher-avg 3 \
        --bpe-model data/synth/lang_bpe_64/bpe.model --beam 4 --nbest 4
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.cli import add_config_args, config_from_args, make_parser  # noqa: E402
from mvq_kd.device import pick_device  # noqa: E402
from mvq_kd.nbest import NBestConfig, compute_nbest  # noqa: E402
from mvq_kd.shards import add_shard_args, part_manifests, shards_from_args  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    add_config_args(p, NBestConfig, "teacher and search")
    add_shard_args(p)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    num_shards, shards, rank = shards_from_args(args)
    cfg = config_from_args(NBestConfig, args, max_duration=args.max_duration)
    for src, out in part_manifests(args):
        compute_nbest(
            cfg,
            src,
            out,
            pick_device(args.device, rank),
            num_shards=num_shards,
            shards=shards,
        )


if __name__ == "__main__":
    main()
