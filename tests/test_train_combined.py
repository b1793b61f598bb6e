"""MVQ-KD + layer-wise KD + sequence-level KD in one run, with unlabeled cuts: training
cuts that carry codebook indexes and N-best lists, a teacher on the fly."""

import json

import pytest
import torch
from lhotse import load_manifest

from mvq_kd.codebooks import compute_codebook_indexes
from mvq_kd.fields import INDEX_FIELD, cut_nbest
from mvq_kd.kd.frame import FrameKdConfig
from mvq_kd.kd.sequence import SequenceKdConfig
from mvq_kd.loss import TeacherTargets, compute_loss, frame_kd_targets, layerwise_teacher_targets
from mvq_kd.nbest import NBestConfig, compute_nbest
from mvq_kd.quantization import Quantizer
from mvq_kd.teacher import TeacherSpec
from mvq_kd.trainer import Trainer
from tests.test_train import tiny_config
from tests.test_train_layerwise import ALL_LOSSES

CPU = torch.device("cpu")
PARTS = ("train", "train-unlabeled")


@pytest.fixture(scope="module")
def combo(tiny_data, teacher_exp, tmp_path_factory) -> dict:
    """Codebook indexes (prepare.sh stage 7) then N-best lists on those cuts (stage 8
    with --nbest-input-dir the MVQ folder), for the labeled and the unlabeled part."""
    root = tmp_path_factory.mktemp("combo")
    torch.manual_seed(0)
    quantizer = Quantizer(torch.randn(4, 256, 32), torch.zeros(32))
    quantizer.save(root / "quantizer.pt")
    spec = TeacherSpec("conformer", str(teacher_exp), layer=2, epoch=1)
    nbest = NBestConfig(teacher_exp, 1, tiny_data["bpe_model"], 1, beam=2, nbest=2)
    for part in PARTS:
        name = f"synth_cuts_{part}.jsonl.gz"
        src = tiny_data["fbank"] / name
        assert compute_codebook_indexes(spec, root / "quantizer.pt", src, root / "mvq" / name, CPU)
        assert compute_nbest(nbest, root / "mvq" / name, root / "both" / name, CPU)
    return {"dir": root / "both", "mvq": root / "mvq", "quantizer_id": quantizer.id}


def combined_config(tiny_data, teacher_exp, combo, exp_dir, unlabeled_dir=None):
    folder = combo["dir"]
    cfg = tiny_config(
        tiny_data,
        exp_dir,
        causal=True,
        data={
            "spec_augment": False,
            "unlabeled_cuts": [(unlabeled_dir or folder) / "synth_cuts_train-unlabeled.jsonl.gz"],
        },
    )
    cfg.data.train_cuts = [folder / "synth_cuts_train.jsonl.gz"]
    cfg.frame_kd = FrameKdConfig(
        layer=1, codebook_loss_scale=0.1, quantizer_id=combo["quantizer_id"]
    )
    cfg.layerwise_kd = ALL_LOSSES
    cfg.sequence_kd = SequenceKdConfig("nbest", "scores", ground_truth_weight=0.5)
    cfg.teacher = TeacherSpec("conformer", str(teacher_exp), layer=None, epoch=1)
    return cfg


def test_cuts_carry_both_kinds_of_targets(combo):
    for part in PARTS:
        for cut in load_manifest(combo["dir"] / f"synth_cuts_{part}.jsonl.gz"):
            assert cut.has_custom(INDEX_FIELD) and cut_nbest(cut)


def test_all_three_families_in_one_step(tiny_data, teacher_exp, combo, tmp_path):
    trainer = Trainer(combined_config(tiny_data, teacher_exp, combo, tmp_path / "exp"))
    trainer.sampler.set_epoch(1)
    batch = next(b for b in trainer.train_loader if None in b["texts"] and any(b["texts"]))
    model = trainer.model
    teacher = TeacherTargets(
        frame_kd_targets(batch, trainer.cfg.frame_kd.cut_fields(), None, CPU),
        layerwise_teacher_targets(batch, trainer.teacher, model.layerwise_kd, CPU),
    )
    loss, stats = compute_loss(
        model, batch, trainer.sp, trainer.cfg.loss, CPU,
        teacher=teacher, sequence_kd=trainer.cfg.sequence_kd,
    )  # fmt: skip
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    for k in ("codebook_loss", "feature_loss", "attention_loss", "apc_loss"):
        assert stats[k] > 0, k
    # The unlabeled cuts train on their pseudo labels too.
    assert stats["labeled_frames"] == stats["frames"]


def test_combined_run_trains_and_records_every_family(tiny_data, teacher_exp, combo, tmp_path):
    exp = tmp_path / "exp"
    Trainer(combined_config(tiny_data, teacher_exp, combo, exp)).train()
    summary = json.loads((exp / "train-summary.json").read_text())["distillation"]
    assert set(summary) == {"frame", "layerwise", "sequence", "unlabeled"}
    ckpt = torch.load(exp / "epoch-1.pt", weights_only=False)
    assert "kd_modules" in ckpt and "layerwise_modules" in ckpt


def test_unlabeled_cuts_without_stored_targets_are_refused(tiny_data, teacher_exp, combo, tmp_path):
    # Unlabeled cuts with N-best lists but no codebook indexes (stage 7 not run on them).
    nbest = NBestConfig(teacher_exp, 1, tiny_data["bpe_model"], 1, beam=2, nbest=2)
    name = "synth_cuts_train-unlabeled.jsonl.gz"
    assert compute_nbest(nbest, tiny_data["fbank"] / name, tmp_path / name, CPU)
    cfg = combined_config(tiny_data, teacher_exp, combo, tmp_path / "exp", unlabeled_dir=tmp_path)
    with pytest.raises(ValueError, match="None of the first 100 unlabeled cuts has a 'codebook_"):
        Trainer(cfg)
