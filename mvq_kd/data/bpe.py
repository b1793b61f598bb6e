"""BPE (sentencepiece unigram) model training on the training transcripts.

Token ids follow icefall: ``<blk>`` = 0 (the transducer blank), ``<sos/eos>`` = 1,
``<unk>`` = 2.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from mvq_kd.utils import Pathlike, atomic_path


def train_bpe(texts: Iterable[str], lang_dir: Pathlike, vocab_size: int) -> Path:
    """Train ``<lang_dir>/bpe.model`` and write ``tokens.txt`` and ``transcript_words.txt``.

    Skipped (returns the existing path) when ``bpe.model`` already exists.
    """
    import sentencepiece as spm

    lang_dir = Path(lang_dir)
    model_path = lang_dir / "bpe.model"
    if model_path.is_file():
        logging.info(f"{model_path} exists, skipping")
        return model_path
    lang_dir.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("No transcripts to train the BPE model on")
    transcript = lang_dir / "transcript_words.txt"
    with atomic_path(transcript) as tmp:
        tmp.write_text("\n".join(texts) + "\n")
    with tempfile.TemporaryDirectory(dir=lang_dir) as tmp_dir:
        prefix = Path(tmp_dir) / "bpe"
        spm.SentencePieceTrainer.train(
            input=str(transcript),
            vocab_size=vocab_size,
            model_type="unigram",
            model_prefix=str(prefix),
            character_coverage=1.0,
            input_sentence_size=100_000_000,
            user_defined_symbols=["<blk>", "<sos/eos>"],
            unk_id=2,
            bos_id=-1,
            eos_id=-1,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
        with atomic_path(lang_dir / "tokens.txt") as tmp:
            tmp.write_text("".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.vocab_size())))
        shutil.move(f"{prefix}.model", model_path)  # last: marks the stage as done
    logging.info(f"Trained {model_path} (vocab {vocab_size}) on {len(texts)} transcripts")
    return model_path
