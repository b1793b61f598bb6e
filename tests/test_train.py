"""train.py / Trainer on real tiny data: DDP, exact resume, filtering, non-finite skip."""

import os
import re
import shutil
import socket
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lhotse import CutSet, NumpyFilesWriter, load_manifest
from lhotse.utils import fastcopy

from mvq_kd.config import OptimConfig, TrainConfig
from mvq_kd.dataset import (
    AsrDataset,
    CutFilter,
    DataConfig,
    ResumableSampler,
    SeededAsrDataset,
    load_cuts,
    make_sampler,
    perturb_tempo,
)
from mvq_kd.model.encoder import EncoderConfig
from mvq_kd.model.transducer import TransducerConfig
from mvq_kd.trainer import Trainer


def tiny_config(tiny_data, exp_dir: Path, causal: bool = False, **kw) -> TrainConfig:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["bpe_model"]))
    fbank = tiny_data["fbank"]
    encoder = EncoderConfig(
        num_layers=2,
        d_model=32,
        num_heads=4,
        ffn_dim=64,
        conv_kernel=7,
        causal=causal,
        chunk_size=4,
        left_context=8,
    )
    data_opts = {"max_duration": 8.0, "num_buckets": 2, "num_workers": 0, **kw.pop("data", {})}
    data = DataConfig(
        train_cuts=[fbank / "synth_cuts_train.jsonl.gz"],
        valid_cuts=[fbank / "synth_cuts_dev.jsonl.gz"],
        **data_opts,
    )
    return TrainConfig(
        exp_dir=exp_dir,
        bpe_model=tiny_data["bpe_model"],
        model=TransducerConfig(
            encoder=encoder, vocab_size=sp.vocab_size(), decoder_dim=32, joiner_dim=32
        ),
        data=data,
        optim=OptimConfig(base_lr=3e-3, warmup_batches=2),
        num_epochs=kw.pop("num_epochs", 1),
        log_interval=1,
        device="cpu",
        **kw,
    )


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_mid_epoch_is_exact(tiny_data, tmp_path):
    full = Trainer(tiny_config(tiny_data, tmp_path / "a", save_every_n=2, keep_last_k=5))
    full.train()
    num_batches = full.step
    assert num_batches >= 4, "the tiny epoch should have several batches"
    ckpt = tmp_path / "a" / "checkpoint-2.pt"
    assert ckpt.is_file() and (tmp_path / "a" / "epoch-1.pt").is_file()

    # Resume from the mid-epoch checkpoint in another folder.
    (tmp_path / "b").mkdir()
    shutil.copy(ckpt, tmp_path / "b" / "checkpoint-2.pt")
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "b", save_every_n=2, start_batch=2))
    assert (resumed.epoch, resumed.batch_in_epoch, resumed.step) == (1, 2, 2)
    resumed.train()
    assert resumed.step == num_batches
    a, b = params(full.model.student), params(resumed.model.student)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # and it did train: the weights moved away from the checkpoint
    start = torch.load(ckpt, weights_only=False)["model"]
    assert any(not torch.equal(start[k], b[k]) for k in start)


def test_resumable_sampler_gives_the_next_batch(tiny_data):
    cfg = tiny_config(tiny_data, Path("unused"))
    cuts = load_cuts(cfg.data.train_cuts)
    s1 = ResumableSampler(make_sampler(cuts, cfg.data, shuffle=True))
    s1.set_epoch(3)
    batches = [sorted(c.id for c in b) for b in s1]
    s2 = ResumableSampler(make_sampler(cuts, cfg.data, shuffle=True))
    s2.set_epoch(3)
    s2.skip = 2
    assert [sorted(c.id for c in b) for b in s2] == batches[2:]
    s2.set_epoch(3)
    assert [sorted(c.id for c in b) for b in s2] == batches  # skip applies once


def _ddp_worker(rank: int, world_size: int, port: int, cfg: TrainConfig, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        trainer = Trainer(cfg, rank, world_size)
        trainer.train()
        first = [c.id for c in next(iter(trainer.train_loader))["cuts"]]
        torch.save(
            {"params": trainer.model.module.state_dict(), "step": trainer.step, "first": first,
             "audio": trainer.epoch_audio_seconds},
            out / f"rank{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def run_ddp(cfg: TrainConfig, out: Path, min_steps: int = 2) -> Tuple[dict, dict]:
    """Train ``cfg`` in two gloo processes; both ranks' results (see :func:`_ddp_worker`),
    checked to have taken the same number (>= min_steps) of steps."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, cfg, out), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=False)
    r1 = torch.load(out / "rank1.pt", weights_only=False)
    assert r0["step"] == r1["step"] >= min_steps
    return r0, r1


def test_ddp_two_gloo_processes_stay_identical(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "exp", data={"max_duration": 5.0})
    r0, r1 = run_ddp(cfg, tmp_path)
    assert r0["first"] != r1["first"], "ranks must see different batches"
    for k, v in r0["params"].items():
        torch.testing.assert_close(v, r1["params"][k], rtol=0, atol=0, msg=k)
    init = Trainer(tiny_config(tiny_data, tmp_path / "init"))
    assert any(not torch.equal(v, r0["params"][k]) for k, v in init.model.state_dict().items()), (
        "training must have changed the weights"
    )
    assert (tmp_path / "exp" / "epoch-1.pt").is_file()


def test_cut_filter_drops_and_counts(tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["bpe_model"]))
    cuts = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz")
    cut = cuts[0]
    filt = CutFilter(sp, 0.5, 20.0)
    assert filt(cut)
    long_text = cut.supervisions[0].text + " " + " ".join(["EXTRAORDINARY"] * 40)
    too_dense = cut.map_supervisions(lambda s: s.transform_text(lambda _: long_text))
    assert not filt(too_dense)
    short = cut.truncate(duration=0.3)
    assert not filt(short)
    assert filt.num_dropped == {"duration": 1, "too_few_frames": 1}
    assert filt.dropped[0].startswith(f"{cut.id} ") and "tokens" in filt.dropped[0]
    assert filt.dropped[1] == f"{short.id} duration 0.30 s outside 0.5-20.0 s"
    filt.reset()
    assert filt.num_dropped == {"duration": 0, "too_few_frames": 0} and filt.dropped == []


def test_nonfinite_batches_are_skipped_and_counted(tiny_data, tmp_path, caplog):
    # One cut gets NaN features (stored with a real lhotse writer).
    cuts = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz").to_eager()
    bad = cuts[0]
    feats = bad.load_features()
    feats[:, :] = np.nan
    with NumpyFilesWriter(tmp_path / "nan") as w:
        key = w.write(bad.id, feats)
        nan_cut = fastcopy(
            bad,
            features=fastcopy(
                bad.features, storage_type=w.name, storage_path=str(w.storage_path), storage_key=key
            ),
        )
    poisoned = CutSet.from_cuts([nan_cut] + list(cuts)[1:])
    path = tmp_path / "poisoned.jsonl.gz"
    poisoned.to_file(path)
    cfg = tiny_config(tiny_data, tmp_path / "exp", data={"spec_augment": False})
    cfg.data.train_cuts = [path]
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.num_nonfinite == 1
    assert "Non-finite loss" in caplog.text and nan_cut.id in caplog.text
    assert all(
        torch.isfinite(v).all()
        for v in trainer.model.state_dict().values()
        if v.is_floating_point()
    )


def test_musan_mixing_trains(tiny_data, tmp_path):
    # Noise cuts with precomputed features, as stage 3 of prepare.sh writes them.
    noise = load_manifest(tiny_data["fbank"] / "synth_cuts_train-unlabeled.jsonl.gz")
    noise = CutSet.from_cuts(fastcopy(c, supervisions=[]) for c in noise)
    noise_path = tmp_path / "musan_cuts_all.jsonl.gz"
    noise.to_file(noise_path)
    cfg = tiny_config(tiny_data, tmp_path / "exp", data={"musan_cuts": noise_path})
    trainer = Trainer(cfg)
    trainer.sampler.set_epoch(1)
    cuts = [c for batch in trainer.train_loader for c in batch["cuts"]]
    mixed = [c for c in cuts if type(c).__name__ == "MixedCut"]
    assert 0 < len(mixed) < len(cuts), "p=0.5: some cuts are mixed, some are not"
    for c in mixed:  # speech first, then the (possibly truncated) noise
        assert c.tracks[0].cut.supervisions and not c.tracks[1].cut.supervisions
        assert c.tracks[1].cut.recording_id in {n.recording_id for n in noise}
    trainer.train()
    assert (tmp_path / "exp" / "epoch-1.pt").is_file()
    # --musan-prob 1 --musan-snr 0 5: every cut mixed, at 0-5 dB
    data = {"musan_cuts": noise_path, "musan_prob": 1.0, "musan_snr": (0.0, 5.0)}
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "exp2", data=data))
    trainer.sampler.set_epoch(1)
    cuts = [c for batch in trainer.train_loader for c in batch["cuts"]]
    assert all(type(c).__name__ == "MixedCut" for c in cuts)
    snrs = [t.snr for c in cuts for t in c.tracks[1:]]
    assert snrs and all(0.0 <= snr <= 5.0 for snr in snrs)
    for bad in ({"musan_prob": 0.0}, {"musan_snr": (20.0, 10.0)}):
        with pytest.raises(ValueError, match="musan_prob must be in"):
            DataConfig(train_cuts=[], valid_cuts=[], **bad)


def test_musan_warmup_switches_the_noise_by_epoch(tiny_data, tmp_path):
    # --musan-warmup-epochs 1: epoch 1 mixes at the warm-up setting, epoch 2 at --musan-snr;
    # the dataset lives in a worker process (num_workers 1), which must see the epoch.
    noise = load_manifest(tiny_data["fbank"] / "synth_cuts_train-unlabeled.jsonl.gz")
    noise = CutSet.from_cuts(fastcopy(c, supervisions=[]) for c in noise)
    noise_path = tmp_path / "noise.jsonl.gz"
    noise.to_file(noise_path)
    data = {
        "musan_cuts": noise_path, "musan_prob": 1.0, "musan_snr": (0.0, 5.0), "num_workers": 1,
        "musan_warmup_epochs": 1, "musan_warmup_prob": 1.0, "musan_warmup_snr": (30.0, 40.0),
    }  # fmt: skip
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "exp", data=data, num_epochs=2))
    snrs = {}
    train_step = trainer.train_step

    def recording_step(batch):
        snrs.setdefault(trainer.epoch, []).extend(
            t.snr for c in batch["cuts"] for t in c.tracks[1:]
        )
        return train_step(batch)

    trainer.train_step = recording_step
    trainer.train()
    assert set(snrs) == {1, 2} and snrs[1] and snrs[2]
    assert all(30.0 <= snr <= 40.0 for snr in snrs[1]), "epoch 1: the warm-up noise"
    assert all(0.0 <= snr <= 5.0 for snr in snrs[2]), "epoch 2: --musan-snr"
    for bad in ({"musan_warmup_prob": 1.5}, {"musan_warmup_snr": (20.0, 10.0)}):
        with pytest.raises(ValueError, match="musan_warmup_prob must be in"):
            DataConfig(train_cuts=[], valid_cuts=[], **bad)
    with pytest.raises(ValueError, match="musan_warmup_epochs must be >= 0"):
        DataConfig(train_cuts=[], valid_cuts=[], musan_warmup_epochs=-1)


def test_perturb_tempo_resamples_each_utterance():
    ramp = torch.arange(10.0)[:, None].repeat(1, 3)  # (T, F): frame t holds t
    feats = torch.zeros(2, 10, 3)
    feats[0], feats[1, :6] = ramp, ramp[:6]
    out, lens = perturb_tempo(feats, torch.tensor([10, 6]), torch.tensor([1.0, 0.5]))
    assert lens.tolist() == [10, 12] and out.shape == (2, 12, 3)
    torch.testing.assert_close(out[0, :10], ramp)  # factor 1: unchanged
    assert (out[0, 10:] == 0).all()  # padding
    slow = out[1, :, 0]  # twice as slow: 12 frames of the ramp 0..5, still increasing
    assert slow[0] == 0 and slow[-1] == 5 and (slow.diff() >= 0).all()
    fast, lens = perturb_tempo(feats[:1], torch.tensor([10]), torch.tensor([2.0]))
    assert lens.tolist() == [5] and fast.shape == (1, 5, 3)
    torch.testing.assert_close(fast[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5, 8.5]))
    with pytest.raises(ValueError, match="must be > 0"):
        perturb_tempo(feats, torch.tensor([10, 6]), torch.tensor([1.0, 0.0]))


def test_tempo_perturbation_of_training_batches(tiny_data):
    """Every cut's length changes within the factor range, the transcripts do not; a batch
    perturbs the same way every time (resume-exact); frame-aligned targets are refused."""
    cuts = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz").subset(first=6)
    plain = AsrDataset()[cuts]
    ds = SeededAsrDataset(AsrDataset(tempo_perturb=0.2), seed=1)
    batch, again = ds[cuts], ds[cuts]
    assert torch.equal(batch["features"], again["features"])
    assert [c.id for c in batch["cuts"]] == [c.id for c in plain["cuts"]]
    assert batch["texts"] == plain["texts"]
    n, m = plain["feature_lens"].double(), batch["feature_lens"].double()
    assert (m >= (n / 1.2).floor()).all() and (m <= (n / 0.8).ceil()).all()
    assert (m != n).any() and batch["features"].shape[1] == int(m.max())
    assert (
        SeededAsrDataset(AsrDataset(tempo_perturb=0.2), seed=2)[cuts]["feature_lens"].tolist()
        != m.long().tolist()
    )
    with pytest.raises(ValueError, match="Tempo perturbation moves frames"):
        AsrDataset(temporal_fields=["codebook_indexes"], tempo_perturb=0.1)
    with pytest.raises(ValueError, match="tempo_perturb must be in"):
        DataConfig(train_cuts=[], valid_cuts=[], tempo_perturb=0.5)


def test_torchrun_cli_two_processes(tiny_data, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(REPO / "train.py"),
        "--exp-dir",
        str(tmp_path / "exp"),
        "--bpe-model",
        str(tiny_data["bpe_model"]),
        "--manifest-dir",
        str(tiny_data["fbank"]),
        "--num-epochs",
        "1",
        "--num-encoder-layers",
        "1",
        "--encoder-dim",
        "32",
        "--feedforward-dim",
        "64",
        "--decoder-dim",
        "32",
        "--joiner-dim",
        "32",
        "--max-duration",
        "5",
        "--num-buckets",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--log-interval",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(world size 2)" in proc.stderr
    summary = (tmp_path / "exp" / "train-summary.json").read_text()
    assert '"world_size": 2' in summary
    # one log file per rank in <exp-dir>/log/, from the first line on, as icefall writes
    logs = sorted((tmp_path / "exp" / "log").glob("log-train-*"), key=lambda p: p.name[-2:])
    assert [p.name[-2:] for p in logs] == ["-0", "-1"]  # the ranks may start seconds apart
    text = logs[0].read_text()
    assert "Training into" in text.splitlines()[0]  # before anything slow
    assert "Epoch 1 done" in text and "batches," in text


def test_feature_stats_set_on_fresh_start_and_kept_on_resume(tiny_data, tmp_path):
    from mvq_kd.dataset import feature_stats

    cuts = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz")
    feats = np.concatenate([c.load_features() for c in cuts])
    mean, std = feature_stats(cuts)
    np.testing.assert_allclose(mean.numpy(), feats.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std.numpy(), feats.std(0), rtol=1e-3, atol=1e-3)

    trainer = Trainer(tiny_config(tiny_data, tmp_path / "exp"))
    sub = trainer.model.student.encoder.subsampling
    torch.testing.assert_close(sub.feat_mean, mean)
    trainer.train()
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "exp", start_epoch=2, num_epochs=2))
    torch.testing.assert_close(resumed.model.student.encoder.subsampling.feat_std, sub.feat_std)


def test_unlabeled_cuts_are_reshuffled_every_epoch(tiny_data):
    """A ratio below the unlabeled/labeled count ratio reaches other unlabeled cuts in
    each epoch (not the same first ones), deterministically per epoch."""
    from lhotse import load_manifest

    from mvq_kd.dataset import DataConfig, training_cuts

    fbank = tiny_data["fbank"]
    unlabeled = load_manifest(fbank / "synth_cuts_train-unlabeled.jsonl.gz")
    labeled = load_manifest(fbank / "synth_cuts_train.jsonl.gz")
    ratio = 0.5 * len(unlabeled) / len(labeled)  # about half of them per epoch
    cfg = DataConfig(
        [fbank / "synth_cuts_train.jsonl.gz"],
        [fbank / "synth_cuts_dev.jsonl.gz"],
        unlabeled_cuts=[fbank / "synth_cuts_train-unlabeled.jsonl.gz"],
        unlabeled_ratio=ratio,
    )
    train = training_cuts(cfg)

    def epoch_ids(epoch):
        train.set_epoch(epoch)
        ids = [c.id for c in train.cuts]
        assert sorted(i for i in ids if i in labeled.ids) == sorted(labeled.ids)
        return [i for i in ids if i not in labeled.ids]

    firsts = [epoch_ids(e) for e in range(1, 7)]
    assert epoch_ids(3) == firsts[2]  # a resumed epoch sees the same cuts
    assert len({tuple(ids) for ids in firsts}) > 1
    assert len(set().union(*firsts)) > max(len(set(ids)) for ids in firsts)


def _filtered_seconds(cfg: TrainConfig) -> float:
    """The speech the training cuts that pass the filter hold (fbank frames x 10 ms)."""
    sp = spm.SentencePieceProcessor(model_file=str(cfg.bpe_model))
    keep = CutFilter(sp, cfg.data.min_duration, cfg.data.max_cut_duration)
    return sum(c.num_frames * 0.01 for c in load_cuts(cfg.data.train_cuts) if keep(c))


def test_every_cut_trains_every_epoch(tiny_data, tmp_path):
    """A --max-duration above any bucket's duration: with drop_last every batch of the epoch
    was partial and dropped (the epoch trained nothing); now the audio trained is exactly
    the filtered cuts', in one process and in two DDP processes that stay in step."""
    big = {"max_duration": 1000.0, "spec_augment": False}
    cfg = tiny_config(tiny_data, tmp_path / "one", data=big)
    expected = _filtered_seconds(cfg)
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.step == cfg.data.num_buckets  # one (partial) batch per bucket
    assert trainer.epoch_audio_seconds == pytest.approx(expected, abs=1e-3)
    r0, r1 = run_ddp(tiny_config(tiny_data, tmp_path / "ddp", data=big), tmp_path, min_steps=1)
    assert r0["audio"] == r1["audio"] == pytest.approx(expected, abs=1e-3)


def test_an_epoch_without_batches_is_an_error(tiny_data, tmp_path, monkeypatch):
    message = r"Epoch 1 trained no batch .*--max-duration \(8.0 s\)"
    # every cut filtered out (lhotse's sampler cannot even bucket them)
    cfg = tiny_config(tiny_data, tmp_path / "a", data={"max_cut_duration": 0.6})
    with pytest.raises(ValueError, match=r"No cut to batch.* outside 0.5-0.6 s"):
        Trainer(cfg)
    # every batch with a non-finite loss
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "b"))
    monkeypatch.setattr(trainer, "train_step", lambda batch: None)
    with pytest.raises(RuntimeError, match=message):
        trainer.train()
    assert not (tmp_path / "b" / "epoch-1.pt").exists()


def test_training_names_dropped_cuts_and_shows_progress(tiny_data, tmp_path, caplog, capsys):
    cuts = load_manifest(tiny_data["fbank"] / "synth_cuts_train.jsonl.gz")
    limit = float(np.median([c.duration for c in cuts]))
    too_long = sorted(c.id for c in cuts if c.duration > limit)
    cfg = tiny_config(tiny_data, tmp_path / "exp", data={"max_cut_duration": limit})
    with caplog.at_level("INFO"):
        Trainer(cfg).train()
    lines = (tmp_path / "exp" / "dropped-cuts-epoch-1.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == too_long
    assert all(f"s outside 0.5-{limit}" in line for line in lines)
    assert "An epoch: " in caplog.text and "batches a rank" in caplog.text
    assert re.search(r"epoch 1 batch 1/~\d+ step 1: loss", caplog.text)
    assert "epoch 1:" in capsys.readouterr().err  # the bar (tqdm, on stderr)


def test_fewer_cuts_than_buckets_still_batch_every_cut(tiny_data, caplog):
    """A small dev set (3 cuts) with the default 10 buckets: fewer buckets, all cuts."""
    from mvq_kd.dataset import DataConfig, make_sampler

    fbank = tiny_data["fbank"]
    cfg = DataConfig([fbank / "synth_cuts_train.jsonl.gz"], [fbank / "synth_cuts_dev.jsonl.gz"])
    dev = load_manifest(fbank / "synth_cuts_dev.jsonl.gz")
    assert len(dev) < cfg.num_buckets
    sampler = make_sampler(dev, cfg, shuffle=False)
    assert sorted(c.id for batch in sampler for c in batch) == sorted(dev.ids)
    assert f"using {len(dev)} bucket(s)" in caplog.text
    with pytest.raises(ValueError, match="No cut to batch"):
        make_sampler(dev.filter(lambda c: False).to_eager(), cfg, shuffle=False)
