"""Teacher N-best lists (sequence-level KD): storage, determinism, resume, weights."""

import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
from lhotse import load_manifest

from mvq_kd.fields import NBEST_TEACHER_FIELD, cut_nbest, nbest_weights
from mvq_kd.nbest import NBestConfig, compute_nbest
from tests.conftest import REPO

CPU = torch.device("cpu")


def config(teacher_exp, tiny_data, **kw) -> NBestConfig:
    kw = {"beam": 4, "nbest": 3, "max_duration": 5.0, **kw}
    return NBestConfig(teacher_exp, 1, tiny_data["bpe_model"], 1, **kw)


def lists(manifest):
    return {c.id: cut_nbest(c) for c in load_manifest(manifest)}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("part", ["train", "train-unlabeled"])
def test_nbest_beside_the_untouched_transcripts(teacher_exp, tiny_data, tmp_path, part):
    src = tiny_data["fbank"] / f"synth_cuts_{part}.jsonl.gz"
    before = digest(src)
    out = tmp_path / src.name
    assert compute_nbest(config(teacher_exp, tiny_data), src, out, CPU)
    assert digest(src) == before  # the input manifest is never rewritten
    orig, cuts = load_manifest(src), load_manifest(out)
    assert [c.id for c in cuts] == [c.id for c in orig]
    for o, c in zip(orig, cuts):
        # The ground truth (None for unlabeled cuts) stays as it was.
        assert c.supervisions[0].text == o.supervisions[0].text
        assert (c.supervisions[0].text is None) == (part == "train-unlabeled")
        nbest = cut_nbest(c)
        assert 1 <= len(nbest) <= 3
        scores = [h["score"] for h in nbest]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
        assert len({h["text"] for h in nbest}) == len(nbest)  # distinct hypotheses
        assert c.custom[NBEST_TEACHER_FIELD]["beam"] == 4
        assert c.features.storage_path == o.features.storage_path


def test_nbest_is_deterministic_and_resumes_after_a_kill(teacher_exp, tiny_data, tmp_path):
    cfg = config(teacher_exp, tiny_data)
    src = tiny_data["fbank"] / "synth_cuts_train.jsonl.gz"
    ref = tmp_path / "ref" / src.name
    again = tmp_path / "again" / src.name
    assert compute_nbest(cfg, src, ref, CPU, num_shards=3)
    assert compute_nbest(cfg, src, again, CPU, num_shards=3)
    assert lists(ref) == lists(again)

    # A kill after shard 1: shards 0 and 2 missing, no merged manifest.
    out = tmp_path / "resumed" / src.name
    assert not compute_nbest(cfg, src, out, CPU, num_shards=3, shards=[1])
    assert not out.exists()
    shard1 = out.parent / "synth_cuts_train-shards" / "synth_cuts_train.1.jsonl.gz"
    mtime = shard1.stat().st_mtime_ns
    assert compute_nbest(cfg, src, out, CPU, num_shards=3)
    assert shard1.stat().st_mtime_ns == mtime  # finished shard skipped
    assert lists(out) == lists(ref)
    # Finished: a re-run does nothing.
    mtime = out.stat().st_mtime_ns
    assert compute_nbest(cfg, src, out, CPU, num_shards=3)
    assert out.stat().st_mtime_ns == mtime


def test_weights_sum_to_one():
    scores = [-1.0, -2.5, -7.0, -30.0]
    for weighting in ("uniform", "scores"):
        w = nbest_weights(scores, weighting)
        assert len(w) == 4 and math.isclose(sum(w), 1.0, rel_tol=1e-12)
    assert nbest_weights(scores, "uniform") == [0.25] * 4
    w = nbest_weights(scores, "scores")
    assert w == sorted(w, reverse=True)
    # The teacher's posterior renormalised over the list: softmax of the log-probs.
    assert math.isclose(w[0] / w[1], math.exp(1.5))
    assert nbest_weights([-1000.0, -1001.0], "scores")[0] > 0.7  # no underflow
    assert nbest_weights([-3.0], "scores") == [1.0]
    with pytest.raises(ValueError, match="weighting must be one of"):
        nbest_weights(scores, "posterior")
    with pytest.raises(ValueError, match="at least one"):
        nbest_weights([], "uniform")


def test_bad_settings_are_explained(teacher_exp, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="nbest must be in 1..beam"):
        config(teacher_exp, tiny_data, beam=2, nbest=4)
    from mvq_kd.data.bpe import train_bpe

    texts = [
        c.supervisions[0].text
        for c in load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz")
    ]
    other = train_bpe(texts, tmp_path / "lang", vocab_size=40)
    cfg = NBestConfig(teacher_exp, 1, other, 1)
    src = tiny_data["fbank"] / "synth_cuts_dev.jsonl.gz"
    with pytest.raises(ValueError, match="has 40 tokens, the teacher .* 60"):
        compute_nbest(cfg, src, tmp_path / "x.jsonl.gz", CPU)


def test_local_program(teacher_exp, tiny_data, tmp_path):
    cmd = [
        sys.executable, str(REPO / "local" / "compute_nbest.py"),
        "--manifest-dir", str(tiny_data["fbank"]), "--prefix", "synth",
        "--parts", "dev", "test-clean", "--output-dir", str(tmp_path),
        "--teacher-model", str(teacher_exp), "--teacher-epoch", "1",
        "--bpe-model", str(tiny_data["bpe_model"]), "--beam", "3", "--nbest", "2",
        "--device", "cpu",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    for part in ("dev", "test-clean"):
        nb = lists(tmp_path / f"synth_cuts_{part}.jsonl.gz")
        assert nb and all(1 <= len(v) <= 2 for v in nb.values())
    bad_cmd = [("nope" if a == "test-clean" else a) for a in cmd]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True)
    assert bad.returncode != 0 and "Missing manifest" in bad.stderr


def test_prepare_sh_stage_8(teacher_exp, tiny_data, tmp_path):
    data_dir = tiny_data["fbank"].parent
    args = ["bash", "prepare.sh", "--stage", "8", "--stop-stage", "8",
            "--data-dir", str(data_dir), "--vocab-size", "60", "--nbest-dir", str(tmp_path),
            "--nbest-beam", "2", "--nbest", "2"]  # fmt: skip
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert res.returncode != 0 and "stage 8 needs a transducer teacher" in res.stderr
    teacher = ["--teacher-model", str(teacher_exp), "--teacher-epoch", "1"]
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(args + teacher, cwd=REPO, check=True, capture_output=True, env=env)
    for part in ("train", "train-unlabeled"):  # the labeled and the unlabeled training cuts
        nb = lists(tmp_path / f"synth_cuts_{part}.jsonl.gz")
        assert len(nb) == len(load_manifest(tiny_data["fbank"] / f"synth_cuts_{part}.jsonl.gz"))
        assert all(1 <= len(v) <= 2 for v in nb.values())


def test_lists_of_another_teacher_are_not_reused(teacher_exp, tiny_data, tmp_path):
    """A finished output (or shard) of another teacher checkpoint or search stops with a
    clear error instead of being skipped or merged."""
    src = tiny_data["fbank"] / "synth_cuts_train.jsonl.gz"
    out = tmp_path / src.name
    first = config(teacher_exp, tiny_data)
    assert not compute_nbest(first, src, out, CPU, num_shards=2, shards=[0])  # 1 of 2 done
    with pytest.raises(ValueError, match=r"holds the N-best lists of .*beam.: 4.*remove"):
        compute_nbest(config(teacher_exp, tiny_data, beam=3), src, out, CPU, num_shards=2)
    assert compute_nbest(config(teacher_exp, tiny_data), src, out, CPU, num_shards=2)
    with pytest.raises(ValueError, match="holds the N-best lists"):
        compute_nbest(config(teacher_exp, tiny_data, nbest=2), src, out, CPU)
