"""decode.py end to end on real tiny data, checkpoint averaging and the result files.

Tiny models are trained with the real :class:`mvq_kd.trainer.Trainer` on the tiny
synthetic corpus of ``conftest.py`` and decoded through ``decode.main(argv)``.

A tiny model trained with the recipes' usual learning rate collapses to all-blank output
within a few batches (its encoder output becomes nearly constant over time), which would
make every comparison of hypotheses below vacuous. The models here are trained with a
small learning rate instead, so that their hypotheses are non-empty and depend on the
input and on the attention context; the tests assert both before relying on them.
"""

import ast
import copy
import dataclasses
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import kaldialign
import pytest
import torch
from lhotse import load_manifest

import decode
from mvq_kd.checkpoint import average_checkpoints, load_model
from mvq_kd.config import OptimConfig
from mvq_kd.evaluate import decode_suffix, word_errors, write_results
from mvq_kd.trainer import Trainer
from tests.test_train import tiny_config

PARTS = ("test-clean", "test-other")
CPU = torch.device("cpu")


def train(tiny_data, exp_dir: Path, causal: bool) -> Path:
    cfg = tiny_config(tiny_data, exp_dir, causal=causal, num_epochs=2)
    cfg = dataclasses.replace(cfg, optim=OptimConfig(base_lr=1e-4, warmup_batches=2))
    Trainer(cfg).train()
    for epoch in (1, 2):
        assert (exp_dir / f"epoch-{epoch}.pt").is_file()
    return exp_dir


@pytest.fixture(scope="module")
def offline_exp(tiny_data, tmp_path_factory) -> Path:
    """A non-causal tiny model trained for 2 epochs (epoch-1.pt, epoch-2.pt). Read-only."""
    return train(tiny_data, tmp_path_factory.mktemp("offline") / "exp", causal=False)


@pytest.fixture(scope="module")
def streaming_exp(tiny_data, tmp_path_factory) -> Path:
    """A causal (streaming) tiny model trained for 2 epochs. Read-only."""
    return train(tiny_data, tmp_path_factory.mktemp("streaming") / "exp", causal=True)


def run_decode(exp_dir: Path, tiny_data, *extra: str, epoch: int = 2, avg: int = 2, parts=PARTS):
    decode.main(
        [
            "--exp-dir", str(exp_dir),
            "--epoch", str(epoch),
            "--avg", str(avg),
            "--manifest-dir", str(tiny_data["fbank"]),
            "--bpe-model", str(tiny_data["bpe_model"]),
            "--test-parts", *parts,
            "--device", "cpu",
            *extra,
        ]
    )  # fmt: skip


def read_recogs(path: Path) -> Dict[str, Tuple[List[str], List[str]]]:
    """``cut_id -> (ref words, hyp words)``; checks one ref line then one hyp line per cut."""
    lines = path.read_text().splitlines()
    assert len(lines) % 2 == 0, path
    out = {}
    for ref_line, hyp_line in zip(lines[0::2], lines[1::2]):
        cut_id, ref = ref_line.split(":\tref=")
        hyp_id, hyp = hyp_line.split(":\thyp=")
        assert cut_id == hyp_id and cut_id not in out, (ref_line, hyp_line)
        out[cut_id] = (ast.literal_eval(ref), ast.literal_eval(hyp))
    return out


def manifest_texts(tiny_data, part: str) -> Dict[str, List[str]]:
    cuts = load_manifest(tiny_data["fbank"] / f"synth_cuts_{part}.jsonl.gz")
    return {c.id: c.supervisions[0].text.split() for c in cuts}


def summary_wer(path: Path, suffix: str) -> str:
    header, row = path.read_text().splitlines()
    assert header == "settings\tWER"
    settings, wer = row.split("\t")
    assert settings == suffix
    return wer


# ------------------------------------------------------------------ decode.py, offline


def test_greedy_search_files_and_wer(offline_exp, tiny_data):
    run_decode(offline_exp, tiny_data, "--decoding-method", "greedy_search")
    out = offline_exp / "greedy_search"
    suffix = "epoch-2-avg-2"
    any_hyp = False
    for part in PARTS:
        name = f"{part}-{suffix}.txt"
        for kind in ("recogs", "errs", "wer-summary"):
            assert (out / f"{kind}-{name}").is_file(), f"{kind}-{name}"
        recogs = read_recogs(out / f"recogs-{name}")
        refs = manifest_texts(tiny_data, part)
        assert len(refs) >= 3
        assert sorted(recogs) == sorted(refs), "one ref and one hyp line per cut"
        assert {c: r for c, (r, _) in recogs.items()} == refs
        any_hyp |= any(h for _, h in recogs.values())

        # WER recomputed independently from the recogs file
        errors = sum(kaldialign.edit_distance(r, h)["total"] for r, h in recogs.values())
        num_words = sum(len(r) for r, _ in recogs.values())
        expected = f"{100.0 * errors / num_words:.2f}"
        assert summary_wer(out / f"wer-summary-{name}", suffix) == expected
        assert (out / f"errs-{name}").read_text().splitlines()[0] == f"%WER = {expected}"
    assert any_hyp, "the tiny model should output something (see the module docstring)"


def test_modified_beam_search_suffix(offline_exp, tiny_data):
    run_decode(
        offline_exp,
        tiny_data,
        "--decoding-method", "modified_beam_search",
        "--beam-size", "4",
        parts=["test-clean"],
    )  # fmt: skip
    out = offline_exp / "modified_beam_search"
    name = "test-clean-epoch-2-avg-2-beam-4.txt"
    for kind in ("recogs", "errs", "wer-summary"):
        assert (out / f"{kind}-{name}").is_file(), f"{kind}-{name}"
    assert summary_wer(out / f"wer-summary-{name}", "epoch-2-avg-2-beam-4")
    recogs = read_recogs(out / f"recogs-{name}")
    assert sorted(recogs) == sorted(manifest_texts(tiny_data, "test-clean"))
    assert not (out / "recogs-test-clean-epoch-2-avg-2.txt").exists()


def test_chunked_decoding_needs_a_causal_model(offline_exp, tiny_data):
    with pytest.raises(ValueError, match="causal"):
        run_decode(offline_exp, tiny_data, "--streaming", "chunked", parts=["test-clean"])


# ------------------------------------------------------------------ checkpoint averaging


def test_average_of_two_checkpoints(offline_exp, tmp_path):
    a = torch.load(offline_exp / "epoch-1.pt", weights_only=False)
    b = torch.load(offline_exp / "epoch-2.pt", weights_only=False)
    # an integer buffer (as BatchNorm's num_batches_tracked) must be kept, not averaged
    a["model"]["encoder.num_updates"] = torch.tensor(3, dtype=torch.int64)
    b["model"]["encoder.num_updates"] = torch.tensor(8, dtype=torch.int64)
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")

    avg, config = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert config == b["model_config"]
    assert set(avg) == set(b["model"])
    num_changed = 0
    for k, v in b["model"].items():
        if v.is_floating_point():
            expected = (a["model"][k].double() + v.double()) / 2
            assert avg[k].dtype == v.dtype
            torch.testing.assert_close(avg[k], expected.float(), rtol=0, atol=1e-7, msg=k)
            num_changed += not torch.equal(a["model"][k], v)
    assert num_changed > 0, "training should have changed the weights between epochs"
    assert avg["encoder.num_updates"].dtype == torch.int64
    assert int(avg["encoder.num_updates"]) == 8

    # load_model averages the same checkpoints
    model, paths = load_model(offline_exp, 2, 2, CPU)
    assert [p.name for p in paths] == ["epoch-1.pt", "epoch-2.pt"]
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, avg[k], rtol=0, atol=0, msg=k)


def test_average_rejects_mismatched_configs(offline_exp, tmp_path):
    a = torch.load(offline_exp / "epoch-1.pt", weights_only=False)
    b = copy.deepcopy(a)
    b["model_config"]["decoder_dim"] = 2 * a["model_config"]["decoder_dim"]
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="another model config"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    with pytest.raises(FileNotFoundError):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "missing.pt"])


def test_checkpoint_format_is_stable(offline_exp, tmp_path):
    """Checkpoints written before the format moved to mvq_kd.checkpoint (the same literal
    keys) still load; the keys written are exactly these."""
    ckpt = torch.load(offline_exp / "epoch-2.pt", weights_only=False)
    assert set(ckpt) == {
        "model", "model_config", "optimizer", "grad_scaler", "step", "epoch",
        "batch_in_epoch", "train_seconds", "rng", "bpe_model",
    }  # fmt: skip
    old = {"model": ckpt["model"], "model_config": ckpt["model_config"], "epoch": 3}
    torch.save(old, tmp_path / "epoch-1.pt")
    model, _ = load_model(tmp_path, 1, 1, CPU)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_avg_larger_than_epoch_is_a_clear_error(offline_exp, tiny_data):
    with pytest.raises(ValueError, match="--avg must be in 1..2"):
        load_model(offline_exp, 2, 3, CPU)
    with pytest.raises(ValueError, match="--avg"):
        load_model(offline_exp, 2, 0, CPU)
    with pytest.raises(ValueError, match="--avg must be in 1..1"):
        run_decode(offline_exp, tiny_data, epoch=1, avg=2, parts=["test-clean"])


def test_chunked_decoding_equals_simulated(streaming_exp, tiny_data):
    context = ["--chunk-size", "4", "--left-context", "16"]
    run_decode(streaming_exp, tiny_data, "--streaming", "chunked", *context)
    run_decode(streaming_exp, tiny_data, "--streaming", "simulated", *context)
    out = streaming_exp / "greedy_search"
    for part in PARTS:
        chunked = out / f"recogs-{part}-epoch-2-avg-2-chunked-chunk-4-left-16.txt"
        simulated = out / f"recogs-{part}-epoch-2-avg-2-simulated-chunk-4-left-16.txt"
        recogs = read_recogs(chunked)
        assert sorted(recogs) == sorted(manifest_texts(tiny_data, part))
        assert sum(len(h) for _, h in recogs.values()) > 0, "hypotheses must not be empty"
        assert chunked.read_text() == simulated.read_text(), part

    # The comparison is not vacuous: the hypotheses depend on the attention context.
    run_decode(
        streaming_exp,
        tiny_data,
        "--streaming", "simulated",
        "--chunk-size", "1",
        "--left-context", "0",
        parts=["test-clean"],
    )  # fmt: skip
    narrow = read_recogs(out / "recogs-test-clean-epoch-2-avg-2-simulated-chunk-1-left-0.txt")
    wide = read_recogs(out / "recogs-test-clean-epoch-2-avg-2-simulated-chunk-4-left-16.txt")
    assert [h for _, h in narrow.values()] != [h for _, h in wide.values()]


def test_streaming_defaults_to_the_model_context(streaming_exp, tiny_data):
    run_decode(
        streaming_exp, tiny_data, "--decoding-method", "modified_beam_search", parts=["test-other"]
    )
    # the tiny model's EncoderConfig: chunk_size=4, left_context=8; simulated by default
    name = "test-other-epoch-2-avg-2-beam-4-simulated-chunk-4-left-8.txt"
    recogs = read_recogs(streaming_exp / "modified_beam_search" / f"recogs-{name}")
    assert sorted(recogs) == sorted(manifest_texts(tiny_data, "test-other"))


def test_decode_suffix_names_the_files_decode_writes():
    assert decode_suffix(2, 2) == "epoch-2-avg-2"
    assert decode_suffix(10, 3, "modified_beam_search", beam_size=8) == "epoch-10-avg-3-beam-8"
    assert (
        decode_suffix(2, 2, "modified_beam_search", 4, streaming="simulated", chunk=4, left=8)
        == "epoch-2-avg-2-beam-4-simulated-chunk-4-left-8"
    )
    assert (
        decode_suffix(5, 1, streaming="chunked", chunk=16, left=-1)
        == "epoch-5-avg-1-chunked-chunk-16-left--1"
    )
    with pytest.raises(ValueError, match="chunk and left"):
        decode_suffix(2, 2, streaming="simulated")


def test_chunked_modified_beam_search_is_refused(streaming_exp, tiny_data):
    with pytest.raises(ValueError, match="greedy_search only"):
        run_decode(
            streaming_exp,
            tiny_data,
            "--streaming", "chunked",
            "--decoding-method", "modified_beam_search",
            parts=["test-clean"],
        )  # fmt: skip
    assert not list(streaming_exp.glob("*/*chunked*beam*")), "nothing written"


# ------------------------------------------------------------------ word errors, result files


@pytest.mark.parametrize(
    "ref,hyp,expected",
    [
        ("a b c d", "a b c d", (0, 0, 0)),
        ("a b c d", "a x c d", (1, 0, 0)),
        ("a b c d", "a c d", (0, 1, 0)),
        ("a b c d", "a b c d e", (0, 0, 1)),
        ("a b c d", "x b d e f", (1, 1, 2)),
        ("a b", "", (0, 2, 0)),
        ("", "a b", (0, 0, 2)),
    ],
)
def test_word_errors(ref, hyp, expected):
    assert word_errors(ref.split(), hyp.split()) == expected


def test_write_results(tmp_path):
    results = [
        ("u1", ["the", "cat", "sat"], ["the", "hat", "sat"]),  # 1 substitution
        ("u2", ["on", "mats"], ["on"]),  # 1 deletion
        ("u3", [], []),
    ]
    wer = write_results(tmp_path / "out", "test-clean", "epoch-3-avg-2", results)
    assert wer == pytest.approx(40.0)
    name = "test-clean-epoch-3-avg-2.txt"
    assert (tmp_path / "out" / f"wer-summary-{name}").read_text() == (
        "settings\tWER\nepoch-3-avg-2\t40.00\n"
    )
    errs = (tmp_path / "out" / f"errs-{name}").read_text().splitlines()
    assert errs[0] == "%WER = 40.00"
    assert errs[1] == "Errors: 0 insertions, 1 deletions, 1 substitutions, over 5 reference words"
    assert "u1:\tthe (cat->hat) sat" in errs
    assert "u2:\ton (mats->*)" in errs
    assert not any(line.startswith("u3") for line in errs)
    recogs = read_recogs(tmp_path / "out" / f"recogs-{name}")
    assert recogs == {c: (r, h) for c, r, h in results}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"errs-{name}",
        f"recogs-{name}",
        f"wer-summary-{name}",
    ], "three files and no temporary ones"


def test_missing_epoch_lists_the_epochs_there(offline_exp, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No epoch-5\.pt in .* it has epochs 1, 2$"):
        load_model(offline_exp, 5, 1, CPU)
    with pytest.raises(FileNotFoundError, match="epoch-3.pt, epoch-4.pt .* it has epochs 1, 2"):
        load_model(offline_exp, 4, 3, CPU)
    with pytest.raises(FileNotFoundError, match="it has no epoch-N.pt"):
        load_model(tmp_path, 1, 1, CPU)


def test_scoring_normalises_references_and_hypotheses(offline_exp, tiny_data, tmp_path):
    """References written in lower case with punctuation score like the upper-case ones."""
    cuts = load_manifest(tiny_data["fbank"] / "synth_cuts_test-clean.jsonl.gz")
    refs = {c.id: c.supervisions[0].text.split() for c in cuts}

    def messy(cut):
        words = cut.supervisions[0].text.lower().split()
        cut.supervisions[0].text = f'"{words[0].capitalize()}, ' + " ".join(words[1:]) + '."'
        return cut

    cuts.map(messy).to_file(tmp_path / "synth_cuts_test-clean.jsonl.gz")
    exp = tmp_path / "exp"
    shutil.copytree(offline_exp, exp)
    for norm in ("upper", "none"):
        decode.main(
            [
                "--exp-dir", str(exp), "--epoch", "2", "--avg", "1",
                "--manifest-dir", str(tmp_path), "--bpe-model", str(tiny_data["bpe_model"]),
                "--test-parts", "test-clean", "--device", "cpu", "--text-norm", norm,
            ]
        )  # fmt: skip
        recogs = read_recogs(exp / "greedy_search" / "recogs-test-clean-epoch-2-avg-1.txt")
        scored = {c: r for c, (r, _) in recogs.items()}
        if norm == "upper":
            assert scored == refs
        else:
            assert all(r[-1].endswith('."') for r in scored.values())
