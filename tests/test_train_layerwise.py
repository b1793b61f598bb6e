"""Layer-wise KD in training: a frozen non-streaming Conformer teacher on the fly,
auxiliary branches on a streaming student, unlabeled cuts, on real tiny manifests."""

import pytest
import torch

import train as train_cli
from mvq_kd.checkpoint import load_model
from mvq_kd.kd.build import build_layerwise_kd
from mvq_kd.kd.layerwise import LayerwiseKdConfig
from mvq_kd.loss import TeacherTargets, compute_loss, layerwise_teacher_targets
from mvq_kd.model.transducer import Transducer
from mvq_kd.teacher import TeacherSpec
from mvq_kd.trainer import Trainer
from tests.test_decode import run_decode
from tests.test_train import run_ddp, tiny_config

CPU = torch.device("cpu")
ALL_LOSSES = LayerwiseKdConfig(
    num_connections=2, feature_loss_scale=1.0, attention_loss_scale=0.1, apc_loss_scale=1.0
)


def lw_config(tiny_data, teacher_exp, exp_dir, layerwise=ALL_LOSSES, unlabeled=True, **kw):
    data = {"spec_augment": False, **kw.pop("data", {})}
    if unlabeled:
        data["unlabeled_cuts"] = [tiny_data["fbank"] / "synth_cuts_train-unlabeled.jsonl.gz"]
    cfg = tiny_config(tiny_data, exp_dir, causal=True, data=data, **kw)
    cfg.layerwise_kd = layerwise
    cfg.teacher = TeacherSpec("conformer", str(teacher_exp), layer=None, epoch=1)
    return cfg


def batches(trainer):
    trainer.sampler.set_epoch(1)
    return list(trainer.train_loader)


def test_every_parameter_gets_a_gradient_and_unlabeled_cuts_are_mixed_in(
    tiny_data, teacher_exp, tmp_path
):
    trainer = Trainer(lw_config(tiny_data, teacher_exp, tmp_path / "exp"))
    kd = trainer.model.layerwise_kd
    assert kd.pairs == [(1, 1), (2, 2)] and kd.teacher_layers == [1, 2]
    all_batches = batches(trainer)
    texts = [t for b in all_batches for t in b["texts"]]
    num_unlabeled = sum(t is None for t in texts)
    # About one unlabeled cut per labeled one (1:1 by default), every labeled cut once.
    assert 0.5 < num_unlabeled / (len(texts) - num_unlabeled) < 2.0
    batch = next(b for b in all_batches if None in b["texts"] and any(b["texts"]))
    teacher = layerwise_teacher_targets(batch, trainer.teacher, kd, CPU)
    loss, stats = compute_loss(
        trainer.model,
        batch,
        trainer.sp,
        trainer.cfg.loss,
        CPU,
        teacher=TeacherTargets(None, teacher),
    )
    loss.backward()
    missing = [n for n, p in trainer.model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(stats[k] > 0 for k in ("feature_loss", "attention_loss", "apc_loss"))
    assert 0 < stats["labeled_frames"] < stats["frames"]
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_unlabeled_cuts_produce_no_transducer_loss(tiny_data, teacher_exp, tmp_path):
    trainer = Trainer(lw_config(tiny_data, teacher_exp, tmp_path / "exp"))
    model = trainer.model.eval()  # no dropout: the two forwards must agree
    batch = next(b for b in batches(trainer) if None in b["texts"] and any(b["texts"]))
    kd = trainer.model.layerwise_kd
    _, mixed = compute_loss(
        model, batch, trainer.sp, trainer.cfg.loss, CPU,
        teacher=TeacherTargets(layers=layerwise_teacher_targets(batch, trainer.teacher, kd, CPU)),
    )  # fmt: skip
    # The same batch without its unlabeled cuts: identical transducer losses.
    keep = [i for i, t in enumerate(batch["texts"]) if t is not None]
    n = int(batch["feature_lens"][keep].max())
    labeled = {
        "features": batch["features"][keep, :n],
        "feature_lens": batch["feature_lens"][keep],
        "speech_feature_lens": batch["speech_feature_lens"][keep],
        "texts": [batch["texts"][i] for i in keep],
        "cuts": [batch["cuts"][i] for i in keep],
    }
    _, alone = compute_loss(model, labeled, trainer.sp, trainer.cfg.loss, CPU)
    for k in ("simple_loss", "pruned_loss"):
        assert mixed[k] == pytest.approx(alone[k], rel=1e-4), k
    assert mixed["labeled_frames"] == alone["frames"]
    # A batch of unlabeled cuts only: no transducer loss, still a gradient for DDP.
    unl = [i for i, t in enumerate(batch["texts"]) if t is None]
    only = {k: (v[unl] if torch.is_tensor(v) else [v[i] for i in unl]) for k, v in batch.items()}
    model.train()
    loss, stats = compute_loss(
        model, only, trainer.sp, trainer.cfg.loss, CPU,
        teacher=TeacherTargets(layers=layerwise_teacher_targets(only, trainer.teacher, kd, CPU)),
    )  # fmt: skip
    assert stats["simple_loss"] == stats["pruned_loss"] == stats["labeled_frames"] == 0
    loss.backward()
    decoder = trainer.model.student.decoder.embedding.weight.grad
    assert decoder is not None and decoder.abs().sum() == 0


def test_trained_student_decodes_without_branches(tiny_data, teacher_exp, tmp_path):
    exp = tmp_path / "exp"
    trainer = Trainer(lw_config(tiny_data, teacher_exp, exp))
    trainer.train()
    ckpt = torch.load(exp / "epoch-1.pt", weights_only=False)
    assert set(ckpt["model"]) == set(Transducer(trainer.cfg.model).state_dict())
    assert any(k.startswith("branches.1.lstm") for k in ckpt["layerwise_modules"])
    # The branch-free student from the checkpoint computes exactly the trained encoder.
    model, _ = load_model(exp, 1, 1, CPU)
    student = trainer.model.student.eval()
    batch = batches(trainer)[0]
    x, x_lens = batch["features"], batch["feature_lens"]
    with torch.no_grad():
        ref = student.encoder(x, x_lens, chunk_size=4, left_context=8)
        got = model.encoder(x, x_lens, chunk_size=4, left_context=8)
        streamed, lens = model.encoder.streaming_encode(x, x_lens, chunk_size=4, left_context=8)
    for i, n in enumerate(ref.out_lens.tolist()):
        torch.testing.assert_close(got.out[i, :n], ref.out[i, :n], rtol=0, atol=0)
        torch.testing.assert_close(streamed[i, :n], ref.out[i, :n], rtol=1e-4, atol=1e-4)
    run_decode(exp, tiny_data, "--streaming", "chunked", epoch=1, avg=1, parts=["test-clean"])
    # Resuming restores the branches; summary records the distillation.
    cfg = lw_config(tiny_data, teacher_exp, exp, num_epochs=1)
    cfg.start_epoch = 2
    resumed = Trainer(cfg)
    for k, v in resumed.model.layerwise_kd.state_dict().items():
        assert torch.equal(v, ckpt["layerwise_modules"][k]), k
    summary = (exp / "train-summary.json").read_text()
    assert '"layerwise"' in summary and "train-unlabeled" in summary


def test_ddp_with_layerwise_kd_stays_identical(tiny_data, teacher_exp, tmp_path):
    cfg = lw_config(tiny_data, teacher_exp, tmp_path / "exp", data={"max_duration": 5.0})
    r0, r1 = run_ddp(cfg, tmp_path)
    assert any(k.startswith("layerwise_kd.") for k in r0["params"])
    for k, v in r0["params"].items():
        torch.testing.assert_close(v, r1["params"][k], rtol=0, atol=0, msg=k)


def test_bad_setups_are_clear_errors(tiny_data, teacher_exp, tmp_path):
    cfg = lw_config(tiny_data, teacher_exp, tmp_path / "a")
    cfg.teacher = None
    with pytest.raises(ValueError, match="needs --teacher-model"):
        Trainer(cfg)
    cfg = lw_config(tiny_data, teacher_exp, tmp_path / "b", data={"spec_augment": True})
    with pytest.raises(ValueError, match="Time-warp"):
        Trainer(cfg)
    cfg = lw_config(tiny_data, teacher_exp, tmp_path / "b", data={"tempo_perturb": 0.1})
    with pytest.raises(ValueError, match="Tempo perturbation"):
        Trainer(cfg)
    cfg = lw_config(tiny_data, teacher_exp, tmp_path / "c", layerwise=LayerwiseKdConfig())
    with pytest.raises(ValueError, match="unlabeled cuts only train"):
        Trainer(cfg)
    cfg = lw_config(tiny_data, teacher_exp, tmp_path / "d")
    cfg.teacher = TeacherSpec("hf", "no-such-model", layer=1)
    with pytest.raises(ValueError, match="Conformer teacher"):
        build_layerwise_kd(cfg.layerwise_kd, cfg.data, cfg.model.encoder, object())


def test_train_cli_builds_layerwise_options(tiny_data, teacher_exp, tmp_path):
    argv = [
        "--exp-dir", str(tmp_path / "exp"), "--bpe-model", str(tiny_data["bpe_model"]),
        "--manifest-dir", str(tiny_data["fbank"]), "--causal", "true",
        "--layerwise-student-layers", "1", "2", "--layerwise-teacher-layers", "2", "2",
        "--feature-loss-scale", "1", "--apc-loss-scale", "0.5", "--apc-shift", "3",
        "--unlabeled-parts", "train-unlabeled", "--unlabeled-ratio", "0.5",
        "--teacher-model", str(teacher_exp), "--teacher-epoch", "1",
    ]  # fmt: skip
    cfg = train_cli.build_config(train_cli.get_parser().parse_args(argv))
    lw = cfg.layerwise_kd
    assert (lw.student_layers, lw.teacher_layers) == ((1, 2), (2, 2))
    assert (lw.feature_loss_scale, lw.apc_loss_scale, lw.apc_shift) == (1.0, 0.5, 3)
    assert cfg.teacher.layer is None and cfg.data.unlabeled_ratio == 0.5
    assert cfg.data.unlabeled_cuts[0].name == "synth_cuts_train-unlabeled.jsonl.gz"
    with pytest.raises(SystemExit, match="needs --teacher-model"):
        train_cli.build_config(
            train_cli.get_parser().parse_args(argv[: argv.index("--teacher-model")])
        )
