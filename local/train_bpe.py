#!/usr/bin/env python3
"""Train a sentencepiece unigram BPE model on the transcripts of supervision manifests.

Writes <lang-dir>/bpe.model, tokens.txt and transcript_words.txt (skipped if done).
Supervisions without text (unlabeled parts) are ignored.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lhotse import load_manifest  # noqa: E402

from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.data.bpe import train_bpe  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument(
        "--supervisions", type=Path, nargs="+", required=True, help="manifests of the texts"
    )
    p.add_argument("--lang-dir", type=Path, required=True, help="output folder (bpe.model)")
    p.add_argument("--vocab-size", type=int, default=500, help="BPE tokens, blank included")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    texts = [s.text for path in args.supervisions for s in load_manifest(path) if s.text]
    train_bpe(texts, args.lang_dir, args.vocab_size)


if __name__ == "__main__":
    main()
