"""prepare.sh stages 5-7 on the tiny corpus: teacher embeddings -> quantizer -> codebook
indexes in lhotse manifests, readable by plain lhotse; sharding and resumption."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet, load_manifest
from lhotse.dataset.collation import collate_features

from mvq_kd.codebooks import compute_codebook_indexes
from mvq_kd.fields import INDEX_FIELD, QUANTIZER_ID_FIELD, check_quantizer_ids
from mvq_kd.quantization import Quantizer
from mvq_kd.teacher import TeacherSpec
from tests.conftest import REPO

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mvq_dir(tiny_data, teacher_exp, tmp_path_factory) -> Path:
    """Runs ./prepare.sh --stage 5 --stop-stage 7 once for the module."""
    out = tmp_path_factory.mktemp("mvq") / "mvq"
    proc = subprocess.run(
        [
            "./prepare.sh", "--stage", "5", "--stop-stage", "7",
            "--data-dir", str(tiny_data["fbank"].parent), "--mvq-dir", str(out),
            "--teacher-model", str(teacher_exp), "--teacher-epoch", "1",
            "--teacher-layer", "2", "--num-codebooks", "4", "--mvq-num-cuts", "100",
            "--quantizer-ridge", "0.05",
        ],
        cwd=REPO, env={**os.environ, "PYTHON": str(Path(os.sys.executable))},
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out.parent / "prepare.log").write_text(proc.stdout + proc.stderr)
    return out


def test_prepare_stages_write_plain_lhotse_manifests(mvq_dir, tiny_data, teacher_exp):
    log = (mvq_dir.parent / "prepare.log").read_text()
    assert "quantizer ridge 0.05 round 1" in log, "--quantizer-ridge reaches the quantizer"
    assert "ridge 0.01 round" not in log and "ridge 0.1 round" not in log
    cuts = load_manifest(mvq_dir / "synth_cuts_train.jsonl.gz")
    source = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz")
    assert [c.id for c in cuts] == [c.id for c in source]
    quantizer = Quantizer.load(mvq_dir / "quantizer.pt")
    teacher = TeacherSpec("conformer", str(teacher_exp), layer=2, epoch=1).build(CPU)
    for cut in list(cuts)[:3]:
        idx = cut.load_custom(INDEX_FIELD)
        assert idx.dtype == np.uint8 and idx.shape[1] == 4
        assert getattr(cut, QUANTIZER_ID_FIELD) == quantizer.id
        assert cut.codebook_indexes.frame_shift == 0.04
        x, x_lens = collate_features(CutSet.from_cuts([cut]))
        out = teacher.embed(x, x_lens.long())
        assert idx.shape[0] == int(out.lens[0])
        assert np.array_equal(idx, quantizer.encode(out.embeddings[0]).numpy())
    # Not stored unless asked for.
    assert "teacher_embeddings" not in (cuts[0].custom or {})
    # Re-running skips everything (the merged manifest is the marker).
    before = (mvq_dir / "synth_cuts_train.jsonl.gz").stat().st_mtime_ns
    ok = compute_codebook_indexes(
        TeacherSpec("conformer", str(teacher_exp), layer=2, epoch=1),
        mvq_dir / "quantizer.pt",
        tiny_data["fbank"] / "synth_cuts_train.jsonl.gz",
        mvq_dir / "synth_cuts_train.jsonl.gz",
        CPU,
    )
    assert ok and (mvq_dir / "synth_cuts_train.jsonl.gz").stat().st_mtime_ns == before


def indexes(manifest: Path):
    return {c.id: c.load_custom(INDEX_FIELD) for c in load_manifest(manifest)}


def test_killed_run_resumes_with_identical_indexes(mvq_dir, tiny_data, teacher_exp, tmp_path):
    spec = TeacherSpec("conformer", str(teacher_exp), layer=2, epoch=1)
    src = tiny_data["fbank"] / "synth_cuts_train.jsonl.gz"
    q = mvq_dir / "quantizer.pt"
    ref = tmp_path / "ref" / "synth_cuts_train.jsonl.gz"
    assert compute_codebook_indexes(spec, q, src, ref, CPU, num_shards=3, max_duration=5)

    # What a kill during shard 1 leaves: shard 0 done, shard 1's partial HDF5 file, and
    # (from an even earlier kill) shard 2's HDF5 file without its manifest.
    out = tmp_path / "resumed" / "synth_cuts_train.jsonl.gz"
    assert not compute_codebook_indexes(
        spec, q, src, out, CPU, num_shards=3, shards=[0], max_duration=5
    )
    assert not out.exists()
    shards = out.parent / "synth_cuts_train-shards"
    (shards / "synth_cuts_train.1.partial.h5").write_bytes(b"garbage")
    (shards / "synth_cuts_train.2.h5").write_bytes(b"garbage")
    shard0 = (shards / "synth_cuts_train.0.jsonl.gz").stat().st_mtime_ns
    assert compute_codebook_indexes(spec, q, src, out, CPU, num_shards=3, max_duration=5)
    assert (shards / "synth_cuts_train.0.jsonl.gz").stat().st_mtime_ns == shard0  # skipped
    assert not list(shards.glob("*.partial.h5"))
    a, b = indexes(ref), indexes(out)
    assert list(a) == list(b) == [c.id for c in load_manifest(src)]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_indexes_of_another_quantizer_are_not_reused(mvq_dir, tiny_data, teacher_exp, tmp_path):
    """A finished output (or shard) made with another quantizer stops with a clear error
    instead of being skipped or merged with indexes of this one."""
    spec = TeacherSpec("conformer", str(teacher_exp), layer=2, epoch=1)
    src = tiny_data["fbank"] / "synth_cuts_dev.jsonl.gz"
    out = tmp_path / "synth_cuts_dev.jsonl.gz"
    other = tmp_path / "other.pt"
    Quantizer(torch.randn(4, 256, 32), torch.zeros(32)).save(other)
    assert not compute_codebook_indexes(spec, other, src, out, CPU, num_shards=2, shards=[0])
    q = mvq_dir / "quantizer.pt"
    with pytest.raises(ValueError, match=r"shards/.*holds the codebook indexes of quantizer"):
        compute_codebook_indexes(spec, q, src, out, CPU, num_shards=2)
    assert compute_codebook_indexes(spec, other, src, out, CPU, num_shards=2)
    with pytest.raises(ValueError, match=rf"not of {q} .*: remove {out}"):
        compute_codebook_indexes(spec, q, src, out, CPU)


def test_store_embeddings_and_quantizer_mismatch(mvq_dir, tiny_data, teacher_exp, tmp_path):
    spec = TeacherSpec("conformer", str(teacher_exp), layer=1, epoch=1)
    src = tiny_data["fbank"] / "synth_cuts_dev.jsonl.gz"
    out = tmp_path / "synth_cuts_dev.jsonl.gz"
    compute_codebook_indexes(spec, mvq_dir / "quantizer.pt", src, out, CPU, store_embeddings=True)
    cut = load_manifest(out)[0]
    emb = cut.load_custom("teacher_embeddings")
    assert emb.dtype == np.float16 and emb.shape == (cut.load_custom(INDEX_FIELD).shape[0], 32)

    small = Quantizer(torch.randn(2, 256, 8), torch.zeros(8))
    small.save(tmp_path / "q8.pt")
    with pytest.raises(ValueError, match="has dim 32, the quantizer .* expects 8"):
        compute_codebook_indexes(spec, tmp_path / "q8.pt", src, tmp_path / "x.jsonl.gz", CPU)


def test_prepare_sh_needs_a_teacher_for_mvq_stages(tiny_data, tmp_path):
    res = subprocess.run(
        ["./prepare.sh", "--stage", "5", "--stop-stage", "7",
         "--data-dir", str(tiny_data["fbank"].parent), "--mvq-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0 and "need --teacher-model and --teacher-layer" in res.stderr


def test_quantizer_id_check(mvq_dir, tiny_data):
    cuts = load_manifest(mvq_dir / "synth_cuts_train.jsonl.gz")
    qid = Quantizer.load(mvq_dir / "quantizer.pt").id
    assert check_quantizer_ids(cuts, expected_id=qid) == qid
    assert (
        check_quantizer_ids(load_manifest(tiny_data["fbank"] / "synth_cuts_dev.jsonl.gz")) is None
    )
    with pytest.raises(ValueError, match="not by the expected quantizer 0000"):
        check_quantizer_ids(cuts, expected_id="0000")
    mixed = [
        c.with_custom(QUANTIZER_ID_FIELD, "other") if i == 3 else c for i, c in enumerate(cuts)
    ]
    with pytest.raises(ValueError, match="two quantizers .* has other"):
        check_quantizer_ids(CutSet.from_cuts(mixed))


def test_dataset_collates_indexes_also_of_noise_mixed_cuts(mvq_dir, tiny_data):
    import random

    from mvq_kd.dataset import AsrDataset, NoiseMix, speech_track

    cuts = load_manifest(mvq_dir / "synth_cuts_train.jsonl.gz").subset(first=4)
    noise = load_manifest(tiny_data["fbank"] / "synth_cuts_train-unlabeled.jsonl.gz")
    by_id = {c.id: c for c in cuts}
    plain = AsrDataset(temporal_fields=[INDEX_FIELD])[cuts]
    random.seed(0)
    mixed = AsrDataset([NoiseMix(noise, p=1.0)], temporal_fields=[INDEX_FIELD])[cuts]
    assert any(type(c).__name__ == "MixedCut" for c in mixed["cuts"])
    for batch in (plain, mixed):
        idx, lens = batch[INDEX_FIELD], batch[f"{INDEX_FIELD}_lens"]
        assert idx.dtype == torch.int64 and idx.shape[2] == 4
        for i, cut in enumerate(batch["cuts"]):
            assert speech_track(cut).has_custom(INDEX_FIELD)
            source = by_id[cut.id]  # mixed cuts keep the id of their speech
            ref = torch.from_numpy(source.load_custom(INDEX_FIELD)).long()
            assert int(lens[i]) == ref.shape[0]
            assert torch.equal(idx[i, : ref.shape[0]], ref)
            assert (idx[i, ref.shape[0] :] == -100).all()
    with pytest.raises(ValueError, match="has no 'codebook_indexes' field"):
        AsrDataset(temporal_fields=[INDEX_FIELD])[noise.subset(first=2)]
