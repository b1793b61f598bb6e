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

from mvq_kd.data.bpe import train_bpe  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--supervisions", type=Path, nargs="+", required=True)
    p.add_argument("--lang-dir", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=500)
    args = p.parse_args()
    setup_logging()
    texts = [s.text for path in args.supervisions for s in load_manifest(path) if s.text]
    train_bpe(texts, args.lang_dir, args.vocab_size)


if __name__ == "__main__":
    main()
