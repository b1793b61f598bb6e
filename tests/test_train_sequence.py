"""Sequence-level KD in training: the teacher's N-best as weighted pseudo labels, on
real tiny manifests with stored N-best lists, labeled and unlabeled cuts."""

import json
import math

import pytest
import torch
from lhotse import load_manifest

from mvq_kd.dataset import tokenize
from mvq_kd.fields import cut_nbest
from mvq_kd.kd.sequence import SequenceKdConfig, batch_targets, cut_targets
from mvq_kd.loss import compute_loss
from mvq_kd.nbest import NBestConfig, compute_nbest
from mvq_kd.trainer import Trainer
from tests.test_train import tiny_config

CPU = torch.device("cpu")
PARTS = ("train", "train-unlabeled")


@pytest.fixture(scope="module")
def nbest_dir(tiny_data, teacher_exp, tmp_path_factory):
    """3-best lists of the random tiny teacher for the training and unlabeled cuts."""
    out = tmp_path_factory.mktemp("nbest")
    cfg = NBestConfig(teacher_exp, 1, tiny_data["bpe_model"], 1, beam=3, nbest=3)
    for part in PARTS:
        name = f"synth_cuts_{part}.jsonl.gz"
        assert compute_nbest(cfg, tiny_data["fbank"] / name, out / name, CPU)
    return out


def seq_config(tiny_data, nbest_dir, exp_dir, sequence_kd, unlabeled=True, **kw):
    data = {"spec_augment": False, **kw.pop("data", {})}
    if unlabeled:
        data["unlabeled_cuts"] = [nbest_dir / "synth_cuts_train-unlabeled.jsonl.gz"]
    cfg = tiny_config(tiny_data, exp_dir, data=data, **kw)
    cfg.data.train_cuts = [nbest_dir / "synth_cuts_train.jsonl.gz"]
    cfg.sequence_kd = sequence_kd
    return cfg


@pytest.mark.parametrize(
    "cfg",
    [
        SequenceKdConfig("1best"),
        SequenceKdConfig("nbest", "uniform"),
        SequenceKdConfig("nbest", "scores"),
        SequenceKdConfig("nbest", "scores", ground_truth_weight=0.3),
        SequenceKdConfig("nbest", "scores", ground_truth_weight=1.0),
    ],
    ids=["1best", "uniform", "scores", "scores+gt", "gt-alone-when-labeled"],
)
def test_targets_weights_sum_to_one(nbest_dir, cfg):
    for part in PARTS:
        for cut in load_manifest(nbest_dir / f"synth_cuts_{part}.jsonl.gz"):
            targets = cut_targets(cut, cfg)
            assert math.isclose(sum(w for _, w in targets), 1.0, rel_tol=1e-9)
            hyps = [h["text"] for h in cut_nbest(cut)]
            text = cut.supervisions[0].text
            expected = hyps[:1] if cfg.pseudo_labels == "1best" else hyps
            if text is not None and cfg.ground_truth_weight == 1.0:
                expected = []  # the transcript alone: no pseudo label of a labeled cut
            if text is not None and cfg.ground_truth_weight:
                assert targets[0] == (text, cfg.ground_truth_weight)
                expected = [text] + expected
            assert [t for t, _ in targets] == expected  # unlabeled: pseudo labels only


def test_without_pseudo_labels_the_transcripts_stay(nbest_dir, tiny_data):
    off = SequenceKdConfig()
    for cut in load_manifest(nbest_dir / "synth_cuts_train.jsonl.gz"):
        assert cut_targets(cut, off) == [(cut.supervisions[0].text, 1.0)]
    for cut in load_manifest(nbest_dir / "synth_cuts_train-unlabeled.jsonl.gz"):
        assert cut_targets(cut, off) == []
    # Cuts without lists: a clear error naming the cut and the stage.
    cut = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz")[0]
    with pytest.raises(ValueError, match=f"Cut {cut.id} has no teacher N-best .* stage 8"):
        cut_targets(cut, SequenceKdConfig("1best"))


def test_loss_is_the_weighted_sum_over_hypotheses(tiny_data, nbest_dir, tmp_path):
    seq = SequenceKdConfig("nbest", "scores", ground_truth_weight=0.25)
    trainer = Trainer(seq_config(tiny_data, nbest_dir, tmp_path / "exp", seq))
    trainer.sampler.set_epoch(1)
    batch = next(b for b in trainer.train_loader if None in b["texts"] and any(b["texts"]))
    model = trainer.model.eval()  # no dropout: the forwards must agree
    _, stats = compute_loss(model, batch, trainer.sp, trainer.cfg.loss, CPU, sequence_kd=seq)
    # Unlabeled cuts train on their pseudo labels: every cut has a target.
    assert stats["labeled_frames"] == stats["frames"]
    targets = batch_targets(batch["cuts"], seq)
    assert len(targets.texts) > len(batch["cuts"])
    # Reference: one forward per (cut, target), weighted by hand.
    student = trainer.model.student
    ref = {"simple_loss": 0.0, "pruned_loss": 0.0}
    for row, (text, weight) in enumerate(zip(targets.texts, targets.weights.tolist())):
        i = int(targets.rows[row])
        x, x_lens = batch["features"][i : i + 1], batch["feature_lens"][i : i + 1]
        y, y_lens = tokenize(trainer.sp, [text], CPU)
        with torch.no_grad():
            out = student(x[:, : int(x_lens[0])], x_lens, y, y_lens)
        ref["simple_loss"] += weight * float(out.simple_loss)
        ref["pruned_loss"] += weight * float(out.pruned_loss)
    for k, v in ref.items():
        assert stats[k] == pytest.approx(v, rel=1e-4), k


def test_training_on_pseudo_labels_with_unlabeled_cuts(tiny_data, nbest_dir, tmp_path):
    exp = tmp_path / "exp"
    seq = SequenceKdConfig("nbest", "uniform")
    Trainer(seq_config(tiny_data, nbest_dir, exp, seq)).train()
    summary = json.loads((exp / "train-summary.json").read_text())
    assert summary["distillation"]["sequence"] == {
        "pseudo_labels": "nbest",
        "weighting": "uniform",
        "ground_truth_weight": 0.0,
    }
    assert summary["distillation"]["unlabeled"]["ratio"] == 1.0
    # Unlabeled cuts need pseudo labels (or a teacher on the fly).
    with pytest.raises(ValueError, match="unlabeled cuts only train on pseudo labels"):
        Trainer(seq_config(tiny_data, nbest_dir, tmp_path / "x", SequenceKdConfig()))
    # Transcripts alone on labeled cuts: the pseudo labels need unlabeled cuts to train.
    gt_alone = SequenceKdConfig("nbest", "scores", ground_truth_weight=1.0)
    with pytest.raises(ValueError, match="would train nothing without --unlabeled-parts"):
        Trainer(seq_config(tiny_data, nbest_dir, tmp_path / "y", gt_alone, unlabeled=False))
    with pytest.raises(ValueError, match=r"ground_truth_weight must be in \[0, 1\]"):
        SequenceKdConfig("nbest", ground_truth_weight=1.5)
