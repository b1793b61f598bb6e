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

from mvq_kd.nbest import NBestConfig, compute_nbest  # noqa: E402
from mvq_kd.shards import add_shard_args, part_manifests, shards_from_args  # noqa: E402
from mvq_kd.trainer import pick_device  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher-model", type=Path, required=True, help="train.py experiment folder")
    p.add_argument("--teacher-epoch", type=int, required=True)
    p.add_argument("--teacher-avg", type=int, default=1)
    p.add_argument("--bpe-model", type=Path, required=True, help="the teacher's BPE model")
    p.add_argument("--beam", type=int, default=4, help="modified beam search beam")
    p.add_argument("--nbest", type=int, default=4, help="hypotheses kept per cut (<= beam)")
    add_shard_args(p)
    args = p.parse_args()
    setup_logging()
    num_shards, shards, rank = shards_from_args(args)
    cfg = NBestConfig(
        exp_dir=args.teacher_model,
        epoch=args.teacher_epoch,
        avg=args.teacher_avg,
        bpe_model=args.bpe_model,
        beam=args.beam,
        nbest=args.nbest,
        max_duration=args.max_duration,
    )
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
