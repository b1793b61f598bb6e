"""Frame-level KD in training: MVQ-KD and the L1/L2 baselines (stored and on the fly),
on real tiny manifests with codebook indexes and teacher embeddings."""

import random
from pathlib import Path

import pytest
import torch
from lhotse import CutSet, load_manifest
from lhotse.utils import fastcopy

import train as train_cli
from mvq_kd.checkpoint import load_model
from mvq_kd.codebooks import compute_codebook_indexes
from mvq_kd.dataset import AsrDataset, NoiseMix
from mvq_kd.fields import EMBEDDING_FIELD, INDEX_FIELD
from mvq_kd.kd.frame import FrameKd, FrameKdConfig, TargetSpec, frame_ratio
from mvq_kd.kd.regression import EmbeddingRegressionLoss
from mvq_kd.loss import TeacherTargets, compute_loss, frame_kd_targets
from mvq_kd.model.transducer import Transducer
from mvq_kd.quantization import Quantizer
from mvq_kd.teacher import TeacherSpec
from mvq_kd.trainer import Trainer
from tests.test_decode import run_decode
from tests.test_train import run_ddp, tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def kd_data(tiny_data, teacher_exp, tmp_path_factory) -> dict:
    """Training cuts with 4 codebook indexes and fp16 embeddings of the tiny teacher's
    layer 2 (a random quantizer: these tests train on the targets, not for quality)."""
    out = tmp_path_factory.mktemp("kd")
    torch.manual_seed(0)
    quantizer = Quantizer(torch.randn(4, 256, 32), torch.zeros(32))
    quantizer.save(out / "quantizer.pt")
    spec = TeacherSpec("conformer", str(teacher_exp), layer=2, epoch=1)
    src = tiny_data["fbank"] / "synth_cuts_train.jsonl.gz"
    compute_codebook_indexes(
        spec, out / "quantizer.pt", src, out / "synth_cuts_train.jsonl.gz", CPU,
        store_embeddings=True,
    )  # fmt: skip
    noise = load_manifest(tiny_data["fbank"] / "synth_cuts_train-unlabeled.jsonl.gz")
    CutSet.from_cuts(fastcopy(c, supervisions=[]) for c in noise).to_file(out / "noise.jsonl.gz")
    return {"dir": out, "quantizer_id": quantizer.id, "teacher": spec}


def kd_config(tiny_data, kd_data, exp_dir: Path, frame_kd: FrameKdConfig, **kw):
    data = {"spec_augment": False, "musan_cuts": kd_data["dir"] / "noise.jsonl.gz"}
    cfg = tiny_config(tiny_data, exp_dir, data={**data, **kw.pop("data", {})}, **kw)
    cfg.data.train_cuts = [kd_data["dir"] / "synth_cuts_train.jsonl.gz"]
    cfg.frame_kd = frame_kd
    if frame_kd.embedding_source == "teacher":
        cfg.teacher = kd_data["teacher"]
    return cfg


MVQ = FrameKdConfig(codebook_loss_scale=0.1)
L2_STORED = FrameKdConfig(embedding_loss="l2")
L1_TEACHER = FrameKdConfig(embedding_loss="l1", embedding_source="teacher")


@pytest.mark.parametrize("frame_kd", [MVQ, L2_STORED, L1_TEACHER], ids=["mvq", "l2", "l1-teacher"])
def test_every_parameter_gets_a_gradient(tiny_data, kd_data, tmp_path, frame_kd):
    """DDP without find_unused_parameters needs a gradient for every parameter."""
    trainer = Trainer(kd_config(tiny_data, kd_data, tmp_path / "exp", frame_kd))
    trainer.sampler.set_epoch(1)
    batch = next(iter(trainer.train_loader))
    targets = frame_kd_targets(batch, frame_kd.cut_fields(), trainer.teacher, CPU)
    loss, stats = compute_loss(
        trainer.model, batch, trainer.sp, trainer.cfg.loss, CPU, teacher=TeacherTargets(targets)
    )
    loss.backward()
    missing = [n for n, p in trainer.model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    kd_keys = {"codebook_loss"} if frame_kd.use_codebooks else {"embedding_loss"}
    assert kd_keys <= set(stats) and all(stats[k] > 0 for k in kd_keys)
    assert trainer.model.frame_kd.layer == 1  # the middle of 2 layers


def test_mvq_kd_trains_and_the_student_decodes_without_heads(tiny_data, kd_data, tmp_path, caplog):
    exp = tmp_path / "exp"
    frame_kd = FrameKdConfig(codebook_loss_scale=0.1, layer=2, quantizer_id=kd_data["quantizer_id"])
    trainer = Trainer(kd_config(tiny_data, kd_data, exp, frame_kd, num_epochs=2))
    init = {k: v.clone() for k, v in trainer.model.frame_kd.state_dict().items()}
    trainer.train()
    ckpt = torch.load(exp / "epoch-2.pt", weights_only=False)
    # The student is stored apart from the training-only heads ...
    assert set(ckpt["model"]) == set(Transducer(trainer.cfg.model).state_dict())
    assert ckpt["kd_modules"]["codebook.proj.weight"].shape == (4 * 256, 32)
    assert all(not torch.equal(init[k], v) for k, v in ckpt["kd_modules"].items())
    # ... and decode.py loads it strictly and decodes.
    model, _ = load_model(exp, 2, 2, CPU)
    assert isinstance(model, Transducer)
    run_decode(exp, tiny_data, parts=["test-clean"])
    assert (exp / "greedy_search" / "wer-summary-test-clean-epoch-2-avg-2.txt").is_file()
    # Resuming restores the heads.
    cfg = kd_config(tiny_data, kd_data, exp, frame_kd, num_epochs=2)
    cfg.start_epoch = 3
    resumed = Trainer(cfg)
    for k, v in resumed.model.frame_kd.state_dict().items():
        assert torch.equal(v, ckpt["kd_modules"][k])


def test_ddp_with_mvq_kd_stays_identical(tiny_data, kd_data, tmp_path):
    cfg = kd_config(tiny_data, kd_data, tmp_path / "exp", MVQ, data={"max_duration": 5.0})
    r0, r1 = run_ddp(cfg, tmp_path)
    assert any(k.startswith("frame_kd.") for k in r0["params"])
    for k, v in r0["params"].items():
        torch.testing.assert_close(v, r1["params"][k], rtol=0, atol=0, msg=k)


def test_on_the_fly_teacher_matches_stored_embeddings(tiny_data, kd_data):
    """The teacher sees the clean speech track, so its targets equal the stored ones."""
    cuts = load_manifest(kd_data["dir"] / "synth_cuts_train.jsonl.gz").subset(first=4)
    noise = load_manifest(kd_data["dir"] / "noise.jsonl.gz")
    random.seed(0)
    ds = AsrDataset(
        [NoiseMix(noise, p=1.0)], temporal_fields=[EMBEDDING_FIELD], teacher_input="fbank"
    )
    batch = ds[cuts]
    teacher = kd_data["teacher"].build(CPU)
    targets = frame_kd_targets(batch, [], teacher, CPU)
    emb, lens = targets[EMBEDDING_FIELD]
    assert torch.equal(lens, batch[f"{EMBEDDING_FIELD}_lens"])
    for i, n in enumerate(lens.tolist()):
        torch.testing.assert_close(emb[i, :n], batch[EMBEDDING_FIELD][i, :n], atol=2e-2, rtol=1e-2)
    # Noise-mixed cuts are padded to the longest cut; their speech tracks are not.
    assert (batch["speech_feature_lens"] <= batch["feature_lens"]).all()
    assert (batch["speech_feature_lens"] < batch["feature_lens"]).any()


def test_bad_setups_are_clear_errors(tiny_data, kd_data, tmp_path):
    with pytest.raises(ValueError, match="Time-warp SpecAugment"):
        Trainer(kd_config(tiny_data, kd_data, tmp_path / "a", MVQ, data={"spec_augment": True}))
    with pytest.raises(ValueError, match="Tempo perturbation moves frames"):
        Trainer(kd_config(tiny_data, kd_data, tmp_path / "a", MVQ, data={"tempo_perturb": 0.1}))
    wrong_q = FrameKdConfig(codebook_loss_scale=0.1, quantizer_id="0000")
    with pytest.raises(ValueError, match="not by the expected quantizer 0000"):
        Trainer(kd_config(tiny_data, kd_data, tmp_path / "b", wrong_q))
    plain = tiny_config(tiny_data, tmp_path / "c", data={"spec_augment": False})
    plain.frame_kd = MVQ
    with pytest.raises(ValueError, match="has a 'codebook_indexes' field.*prepare.sh stage 7"):
        Trainer(plain)
    with pytest.raises(ValueError, match="KD layer must be in 1..2"):
        bad_layer = FrameKdConfig(codebook_loss_scale=0.1, layer=3)
        Trainer(kd_config(tiny_data, kd_data, tmp_path / "d", bad_layer))
    with pytest.raises(ValueError, match="0.03 s does not divide"):
        frame_ratio(0.03, 0.04)
    assert frame_ratio(0.02, 0.04) == 2 and frame_ratio(0.04, 0.04) == 1
    # A KD run cannot resume from a checkpoint trained without KD.
    base = tiny_config(tiny_data, tmp_path / "e", data={"spec_augment": False})
    Trainer(base).train()
    cfg = kd_config(tiny_data, kd_data, tmp_path / "e", MVQ)
    cfg.start_epoch = 2
    with pytest.raises(ValueError, match="has no kd_modules"):
        Trainer(cfg)


def test_frame_kd_with_a_50hz_teacher_predicts_pairs_of_frames():
    """ratio 2 (HuBERT 20 ms -> student 40 ms): 2N codebooks and 2D dims per frame."""
    cfg = FrameKdConfig(codebook_loss_scale=0.1, embedding_loss="l2")
    kd = FrameKd(cfg, 16, 4, TargetSpec(8, 0.02), TargetSpec(12, 0.02), student_frame_shift=0.04)
    assert kd.layer == 2
    assert kd.codebook.num_codebooks == 16 and kd.embedding.proj.out_features == 24
    layers = [torch.randn(2, 5, 16) for _ in range(4)]
    idx = torch.randint(0, 256, (2, 11, 8))
    emb = torch.randn(2, 11, 12)
    t_lens, s_lens = torch.tensor([11, 7]), torch.tensor([5, 3])
    targets = {INDEX_FIELD: (idx, t_lens), EMBEDDING_FIELD: (emb, t_lens)}
    losses = kd(layers, s_lens, targets)
    assert set(losses) == {"codebook_loss", "embedding_loss"}
    with pytest.raises(ValueError, match="Cut b: 7 teacher frames do not match 9 student"):
        kd(layers, torch.tensor([5, 9]), targets, ["a", "b"])


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_regression_loss_ignores_padding(kind):
    torch.manual_seed(0)
    loss_fn = EmbeddingRegressionLoss(8, 6, kind)
    h, t = torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    lens = torch.tensor([5, 3])
    loss = loss_fn(h, t, lens)
    h2, t2 = h.clone(), t.clone()
    h2[1, 3:], t2[1, 3:] = 100.0, -100.0
    assert torch.allclose(loss_fn(h2, t2, lens), loss)
    pred = loss_fn.proj(loss_fn.norm(h))
    target = torch.nn.functional.layer_norm(t, (6,))
    d = pred - target
    per = d.abs().mean(-1) if kind == "l1" else d.pow(2).mean(-1)
    assert torch.allclose(loss, per[0].sum() + per[1, :3].sum(), atol=1e-5)
    # Zero when the prediction is the (normalised) target.
    same = EmbeddingRegressionLoss(6, 6, kind)
    with torch.no_grad():
        same.proj.weight.copy_(torch.eye(6))
        same.proj.bias.zero_()
    assert same(t, t, lens) < 1e-10


def test_train_cli_builds_kd_options(tiny_data, kd_data, tmp_path):
    args = train_cli.get_parser().parse_args([
        "--exp-dir", str(tmp_path), "--bpe-model", str(tiny_data["bpe_model"]),
        "--manifest-dir", str(tiny_data["fbank"]), "--train-manifest-dir", str(kd_data["dir"]),
        "--codebook-loss-scale", "0.1", "--kd-layer", "2",
        "--quantizer", str(kd_data["dir"] / "quantizer.pt"),
        "--embedding-loss", "l2", "--embedding-source", "teacher",
        "--teacher-model", "exp/x", "--teacher-layer", "3", "--teacher-epoch", "5",
    ])  # fmt: skip
    cfg = train_cli.build_config(args)
    assert cfg.data.train_cuts == [kd_data["dir"] / "synth_cuts_train.jsonl.gz"]
    assert cfg.data.valid_cuts == [tiny_data["fbank"] / "synth_cuts_dev.jsonl.gz"]
    assert cfg.frame_kd.quantizer_id == kd_data["quantizer_id"] and cfg.frame_kd.layer == 2
    assert cfg.teacher == TeacherSpec("conformer", "exp/x", 3, 5, 1, None)
    args.teacher_model = None
    with pytest.raises(SystemExit, match="needs --teacher-model"):
        train_cli.build_config(args)


def test_quantizer_without_mvq_kd_is_refused(tiny_data, kd_data, tmp_path):
    args = train_cli.get_parser().parse_args([
        "--exp-dir", str(tmp_path), "--bpe-model", str(tiny_data["bpe_model"]),
        "--quantizer", str(kd_data["dir"] / "quantizer.pt"),
    ])  # fmt: skip
    with pytest.raises(SystemExit, match="only used with MVQ-KD"):
        train_cli.build_config(args)
