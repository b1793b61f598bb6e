#!/usr/bin/env python3
"""Synthesize the embedded speech corpus (espeak-ng) in the LibriSpeech layout.

Example:
    local/make_synth_corpus.py --corpus-dir download/SynthSpeech --train-hours 2
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.data.synth import SPLITS, SynthCorpusConfig, write_corpus  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    d = SynthCorpusConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus-dir", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-hours", type=float, default=d.train_hours)
    p.add_argument("--unlabeled-hours", type=float, default=d.unlabeled_hours)
    p.add_argument("--dev-utts", type=int, default=d.dev_utts)
    p.add_argument("--test-utts", type=int, default=d.test_utts, help="per test set")
    p.add_argument("--num-train-speakers", type=int, default=d.num_train_speakers)
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--num-jobs", type=int, default=2, help="synthesis processes")
    return p


def main() -> None:
    args = get_parser().parse_args()
    setup_logging()
    cfg = SynthCorpusConfig(
        seed=args.seed,
        train_hours=args.train_hours,
        unlabeled_hours=args.unlabeled_hours,
        dev_utts=args.dev_utts,
        test_utts=args.test_utts,
        num_train_speakers=args.num_train_speakers,
        splits=args.splits,
    )
    logging.info(f"Synthesizing {cfg} into {args.corpus_dir}")
    hours = write_corpus(args.corpus_dir, cfg, num_jobs=args.num_jobs)
    for split, h in hours.items():
        logging.info(f"  {split}: {h:.2f} h")


if __name__ == "__main__":
    main()
