"""Shared fixtures: a tiny synthetic corpus in the LibriSpeech layout (real FLAC files)."""

import shutil
from pathlib import Path

import pytest
import torch

from mvq_kd.data.synth import SynthCorpusConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]

# Tiny models: many small ops, where intra-op threads only add synchronisation.
torch.set_num_threads(1)

TINY = dict(
    train_hours=0.012,
    unlabeled_hours=0.004,
    teacher_hours=0.004,
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


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory) -> dict:
    """Fbank cuts and a BPE model of the tiny corpus (read-only).

    Returns a dict with ``fbank`` (folder of ``synth_cuts_<part>.jsonl.gz``) and
    ``bpe_model``. Feature paths inside the manifests are absolute.
    """
    from lhotse import CutSet

    from mvq_kd.data.bpe import train_bpe
    from mvq_kd.data.fbank import compute_fbank
    from mvq_kd.data.librispeech import prepare_part

    root = tmp_path_factory.mktemp("data")
    texts = []
    for part in ("train", "dev", "test-clean", "test-other", "train-unlabeled"):
        recs, sups, _ = prepare_part(tiny_corpus / part, labeled=part != "train-unlabeled")
        compute_fbank(CutSet.from_manifests(recs, sups), root / "fbank", part, "synth", num_jobs=1)
        if part == "train":
            texts = [s.text for s in sups]
    bpe = train_bpe(texts, root / "lang_bpe_60", vocab_size=60)
    return {"fbank": root / "fbank", "bpe_model": bpe}


@pytest.fixture(scope="session")
def teacher_exp(tmp_path_factory) -> Path:
    """An experiment folder with epoch-1.pt of a tiny (random) non-causal transducer
    (2 layers of dim 32): a teacher for the MVQ and KD tests."""
    from mvq_kd.model.encoder import EncoderConfig
    from mvq_kd.model.transducer import Transducer, TransducerConfig

    torch.manual_seed(0)
    enc = EncoderConfig(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, conv_kernel=7)
    config = TransducerConfig(enc, vocab_size=60, decoder_dim=16, joiner_dim=16)
    exp = tmp_path_factory.mktemp("teacher") / "exp"
    exp.mkdir()
    torch.save(
        {"model": Transducer(config).state_dict(), "model_config": config.to_dict()},
        exp / "epoch-1.pt",
    )
    return exp
