"""Multi-codebook quantizer: shapes, dtype, error, save/load with the id check."""

import logging
from pathlib import Path

import pytest
import torch

from mvq_kd.quantization import Quantizer, QuantizerConfig, train_quantizer


def clustered_data(frames: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Frames with low-rank structure plus noise (like embeddings: quantizable)."""
    basis = torch.randn(8, dim, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 8, generator=g) @ basis + 0.1 * torch.randn(frames, dim, generator=g)


@pytest.fixture(scope="module")
def data():
    return clustered_data(3000, 24), clustered_data(500, 24, seed=1)


@pytest.fixture(scope="module")
def quantizer(data):
    x, _ = data
    return train_quantizer(x, num_codebooks=4, config=QuantizerConfig(train_iters=3))


def test_encode_decode_shapes_and_dtype(quantizer, data):
    x, _ = data
    idx = quantizer.encode(x[:10].view(2, 5, 24))
    assert idx.shape == (2, 5, 4) and idx.dtype == torch.uint8
    rec = quantizer.decode(idx)
    assert rec.shape == (2, 5, 24) and rec.dtype == torch.float32
    # Chunking does not change the result.
    assert torch.equal(quantizer.encode(x[:100], chunk_frames=7), quantizer.encode(x[:100]))


def test_error_falls_with_training_codebooks_and_search(data):
    x, valid = data
    cfg = QuantizerConfig(train_iters=0, refine_iters=0, beam=1)
    base = train_quantizer(x, 2, cfg)
    trained = train_quantizer(x, 2, QuantizerConfig(train_iters=3))
    more = train_quantizer(x, 4, QuantizerConfig(train_iters=3))
    assert trained.relative_error(x) < base.relative_error(x)
    assert more.relative_error(valid) < trained.relative_error(valid) < 1.0
    # A wider search and refinement find better indexes for the same codebooks.
    greedy = Quantizer(trained.codebooks, trained.mean, refine_iters=0, beam=1)
    assert trained.relative_error(valid) < greedy.relative_error(valid)


def test_refinement_never_hurts(quantizer, data):
    _, valid = data
    for beam in (1, 4):
        q0 = Quantizer(quantizer.codebooks, quantizer.mean, refine_iters=0, beam=beam)
        q3 = Quantizer(quantizer.codebooks, quantizer.mean, refine_iters=3, beam=beam)
        e0 = (q0.decode(q0.encode(valid)) - valid).pow(2).sum(-1)
        e3 = (q3.decode(q3.encode(valid)) - valid).pow(2).sum(-1)
        assert (e3 <= e0 + 1e-4).all()  # ICM never increases any frame's error


def test_save_load_and_id_check(quantizer, data, tmp_path):
    x, _ = data
    path = tmp_path / "quantizer.pt"
    quantizer.save(path)
    loaded = Quantizer.load(path, expected_id=quantizer.id)
    assert loaded.id == quantizer.id and len(loaded.id) == 16
    assert torch.equal(loaded.encode(x[:50]), quantizer.encode(x[:50]))
    with pytest.raises(ValueError, match="recompute the indexes"):
        Quantizer.load(path, expected_id="0123456789abcdef")
    other = train_quantizer(x, 4, QuantizerConfig(train_iters=1, seed=3))
    assert other.id != quantizer.id


def test_bad_input():
    with pytest.raises(ValueError, match=">= 256 frames"):
        train_quantizer(torch.randn(100, 8), 2)
    q = Quantizer(torch.randn(2, 256, 8), torch.zeros(8))
    with pytest.raises(ValueError, match="dim 8"):
        q.encode(torch.randn(3, 5))
    with pytest.raises(ValueError, match="2 indexes"):
        q.decode(torch.zeros(3, 3, dtype=torch.uint8))


DATA = Path(__file__).parent / "data"


def test_quantizer_files_of_earlier_versions_still_load():
    """A quantizer saved by the code of 2026-12 (before the stopping rule) loads with its
    id and encodes as it did: manifests made with it stay valid."""
    q = Quantizer.load(DATA / "quantizer-2026-12.pt", expected_id="0a61a5aa92380fe1")
    probe = torch.load(DATA / "quantizer-2026-12-probe.pt", weights_only=True)
    assert torch.equal(q.encode(probe["frames"]), probe["indexes"])


def test_stopping_rule_keeps_the_codebooks_that_generalise(caplog):
    """Few frames for many entries: least-squares rounds overfit the training frames.
    The held-out stopping rule stops early and keeps codebooks at least as good on new
    frames as training all rounds on the training error."""
    x, valid = clustered_data(800, 24, seed=2), clustered_data(1000, 24, seed=3)
    cfg = dict(train_iters=6, stop_tol=0.0, ridge=(1e-3,))  # hardly any shrinkage
    with caplog.at_level(logging.INFO):
        ruled = train_quantizer(x, 4, QuantizerConfig(stop_fraction=0.2, **cfg))
    rounds = [r.getMessage() for r in caplog.records if " round " in r.getMessage()]
    assert "stopping-rule error" in rounds[-1] and "stopping" in rounds[-1]
    assert len(rounds) < 6
    caplog.clear()
    with caplog.at_level(logging.INFO):
        unruled = train_quantizer(x, 4, QuantizerConfig(stop_fraction=0.0, **cfg))
    assert not any("stopping-rule" in r.getMessage() for r in caplog.records)
    assert ruled.relative_error(valid) < 0.8 * unruled.relative_error(valid)


def test_stopping_rule_needs_enough_frames():
    """Too few frames to hold any out: the training error decides, nothing fails."""
    q = train_quantizer(clustered_data(300, 8), 2, QuantizerConfig(train_iters=2))
    assert q.relative_error(clustered_data(300, 8, seed=5)) < 1.0
    with pytest.raises(ValueError, match="stop_fraction"):
        QuantizerConfig(stop_fraction=0.6)
    with pytest.raises(ValueError, match="ridge"):
        QuantizerConfig(ridge=())


def test_each_ridge_gets_its_rounds_and_the_held_out_frames_choose(caplog):
    """Two shrinkage values: both series run from the same start and the one whose
    stopping-rule error is lower is kept; one value alone gives that series' result."""
    x = clustered_data(2500, 24, seed=4)
    cfg = dict(train_iters=3, stop_fraction=0.1)
    with caplog.at_level(logging.INFO):
        both = train_quantizer(x, 4, QuantizerConfig(ridge=(0.01, 1.0), **cfg))
    msgs = [r.getMessage() for r in caplog.records]
    assert any("ridge 0.01 round" in m for m in msgs) and any("ridge 1 round" in m for m in msgs)
    chosen = [m for m in msgs if "chosen" in m]
    assert len(chosen) == 1
    ridge = float(chosen[0].split("ridge ")[1].split()[0])
    alone = train_quantizer(x, 4, QuantizerConfig(ridge=(ridge,), **cfg))
    assert torch.equal(both.codebooks, alone.codebooks)


def test_dimension_1280():
    """HuBERT-XL's dimension: train, encode, decode, save and load."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(16, 1280, generator=g)
    x = torch.randn(1500, 16, generator=g) @ basis + 0.3 * torch.randn(1500, 1280, generator=g)
    q = train_quantizer(x[:1200], 4, QuantizerConfig(train_iters=1, kmeans_iters=3))
    idx = q.encode(x[1200:])
    assert idx.shape == (300, 4) and q.decode(idx).shape == (300, 1280)
    assert q.relative_error(x[1200:]) < 0.9
