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

from mvq_kd.cli import add_config_args, config_from_args, make_parser  # noqa: E402
from mvq_kd.data.synth import SynthCorpusConfig, write_corpus  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--corpus-dir", type=Path, required=True, help="output folder")
    p.add_argument("--num-jobs", type=int, default=2, help="synthesis processes")
    add_config_args(p, SynthCorpusConfig, "corpus")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    cfg = config_from_args(SynthCorpusConfig, args)
    logging.info(f"Synthesizing {cfg} into {args.corpus_dir}")
    hours = write_corpus(args.corpus_dir, cfg, num_jobs=args.num_jobs)
    for split, h in hours.items():
        logging.info(f"  {split}: {h:.2f} h")


if __name__ == "__main__":
    main()
