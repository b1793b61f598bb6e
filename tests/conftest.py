"""Shared fixtures: a tiny synthetic corpus in the LibriSpeech layout (real FLAC files)."""

import shutil
from pathlib import Path

import pytest

from mvq_kd.data.synth import SynthCorpusConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]

TINY = dict(
    train_hours=0.012,
    unlabeled_hours=0.004,
    dev_utts=3,
    test_utts=4,
    num_train_speakers=5,
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A read-only tiny synthetic corpus: copy it before modifying anything."""
    corpus = tmp_path_factory.mktemp("corpus") / "SynthSpeech"
    write_corpus(corpus, SynthCorpusConfig(**TINY), num_jobs=2)
    return corpus


@pytest.fixture
def corpus_copy(tiny_corpus, tmp_path) -> Path:
    """A private, modifiable copy of the tiny corpus."""
    dst = tmp_path / "SynthSpeech"
    shutil.copytree(tiny_corpus, dst)
    return dst
