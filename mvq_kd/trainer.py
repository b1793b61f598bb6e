"""The training loop: epochs of batches, each a forward, backward and optimizer step of
the transducer and distillation losses (:mod:`mvq_kd.loss`), with DDP, AMP, checkpoints
with exact resume (:mod:`mvq_kd.checkpoint`), tensorboard and progress logs.

:class:`Trainer` runs a :class:`TrainConfig` (``train.py`` builds it from its options);
its parts are built by :mod:`mvq_kd.dataset` (batches), :mod:`mvq_kd.kd.build` (teacher
and distillation modules) and :mod:`mvq_kd.device` (devices, process groups).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mvq_kd.checkpoint import (
    Progress,
    batch_checkpoint,
    epoch_checkpoint,
    load_checkpoint,
    remove_old_checkpoints,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
)
from mvq_kd.config import TrainConfig
from mvq_kd.dataset import (
    AsrDataset,
    CutFilter,
    ResumableSampler,
    SeededAsrDataset,
    feature_stats,
    load_bpe,
    load_cuts,
    make_loader,
    make_sampler,
    train_dataset,
    training_cuts,
)
from mvq_kd.device import all_ranks, gather_objects, pick_device, process_group, sum_over_ranks
from mvq_kd.kd.build import build_frame_kd, build_layerwise_kd, build_teacher
from mvq_kd.loss import (
    TeacherTargets,
    TrainingModel,
    compute_loss,
    frame_kd_targets,
    layerwise_teacher_targets,
    unwrap,
)
from mvq_kd.model.encoder import FBANK_FRAME_SHIFT
from mvq_kd.model.transducer import Transducer
from mvq_kd.optim import build_optimizer, eden_lr
from mvq_kd.progress import EpochProgress, expected_batches
from mvq_kd.teacher import Teacher
from mvq_kd.utils import atomic_path


def seed_everything(seed: int) -> None:
    """Seed torch, python and numpy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def check_distillation(cfg: TrainConfig) -> None:
    """Refuse combinations of unlabeled cuts and distillation that would train nothing."""
    if cfg.data.unlabeled_cuts and not (
        cfg.layerwise_kd.enabled or cfg.frame_kd.runs_teacher or cfg.sequence_kd.enabled
    ):
        raise ValueError(
            "unlabeled cuts only train on pseudo labels or the distillation losses of a "
            "teacher run on the fly: enable --pseudo-labels, layer-wise KD or "
            "--embedding-source teacher (or leave out --unlabeled-parts)"
        )
    seq = cfg.sequence_kd
    if seq.enabled and seq.ground_truth_weight == 1.0 and not cfg.data.unlabeled_cuts:
        raise ValueError(
            "--ground-truth-weight 1 keeps the labeled cuts on their transcripts "
            "alone: the pseudo labels would train nothing without --unlabeled-parts "
            "(give unlabeled cuts, a weight below 1, or --pseudo-labels none)"
        )


def build_model(cfg: TrainConfig, device: torch.device) -> Tuple[TrainingModel, Optional[Teacher]]:
    """The student, the teacher run on the fly (if any) and the distillation modules the
    config enables, built in this order (the RNG order is part of exact reproduction)."""
    student = Transducer(cfg.model)
    teacher = None
    if cfg.frame_kd.runs_teacher or cfg.layerwise_kd.enabled:
        teacher = build_teacher(cfg.teacher, device)
    if cfg.sequence_kd.enabled:
        seq = cfg.sequence_kd
        logging.info(
            f"Sequence-level KD: the teacher's {seq.pseudo_labels} as pseudo labels "
            f"({seq.weighting} weights), transcript weight {seq.ground_truth_weight}"
        )
    frame_kd, layerwise_kd = None, None
    if cfg.frame_kd.enabled:
        frame_kd = build_frame_kd(cfg.frame_kd, cfg.data, cfg.model.encoder, teacher)
    if cfg.layerwise_kd.enabled:
        layerwise_kd = build_layerwise_kd(cfg.layerwise_kd, cfg.data, cfg.model.encoder, teacher)
    return TrainingModel(student, frame_kd, layerwise_kd), teacher


class Trainer:
    """Runs :class:`TrainConfig` on this process's rank."""

    def __init__(self, cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = pick_device(cfg.device, rank)
        seed_everything(cfg.seed)
        self.sp = load_bpe(cfg.bpe_model, cfg.model.vocab_size)
        check_distillation(cfg)
        model, self.teacher = build_model(cfg, self.device)
        model = model.to(self.device)
        self.model: nn.Module = model
        self.optimizer = build_optimizer(model.parameters(), cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.use_fp16)
        self.step = 0  # batches trained so far, over all epochs
        self.epoch = cfg.start_epoch
        self.batch_in_epoch = 0  # batches of self.epoch already trained
        self.num_nonfinite = 0
        self.train_seconds = 0.0  # wall time of finished epochs, kept across resumes
        self.tb = None
        if rank == 0:
            cfg.exp_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(cfg.exp_dir / "tensorboard"))
        if not self._resume():
            self._set_feature_stats(model.student)
        if world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._build_loaders()

    def _set_feature_stats(self, student: Transducer) -> None:
        """Global feature normalization from the training cuts (a fresh start)."""
        mean, std = feature_stats(load_cuts(self.cfg.data.train_cuts))
        student.encoder.subsampling.set_feature_stats(mean.to(self.device), std.to(self.device))
        logging.info(
            f"Feature normalization from training cuts: mean {float(mean.mean()):.2f}, "
            f"std {float(std.mean()):.2f} (averaged over bins)"
        )

    def _build_loaders(self) -> None:
        """This rank's training batches (resumable, seeded per batch) and validation
        batches."""
        cfg, d = self.cfg, self.cfg.data
        self.cut_filter = CutFilter(self.sp, d.min_duration, d.max_cut_duration)
        self.train_cuts = training_cuts(d)
        seconds = sum(c.duration for c in load_cuts(d.train_cuts))
        seconds *= 1 + (d.unlabeled_ratio if d.unlabeled_cuts else 0)
        self.expected_batches = expected_batches(seconds, d.max_duration, self.world_size)
        logging.info(f"An epoch: {seconds / 3600:.2f} h, ~{self.expected_batches} batches a rank")
        self.sampler = ResumableSampler(
            make_sampler(
                self.train_cuts.cuts.filter(self.cut_filter),
                cfg.data,
                shuffle=True,
                world_size=self.world_size,
                rank=self.rank,
            )
        )
        dataset = train_dataset(
            cfg.data,
            temporal_fields=cfg.frame_kd.cut_fields(),
            teacher_input=self.teacher.input_type if self.teacher is not None else None,
        )
        self.train_loader = make_loader(
            SeededAsrDataset(dataset, cfg.seed), self.sampler, cfg.data.num_workers, seed=cfg.seed
        )
        valid_sampler = make_sampler(
            load_cuts(cfg.data.valid_cuts),
            cfg.data,
            shuffle=False,
            world_size=self.world_size,
            rank=self.rank,
        )
        self.valid_loader = make_loader(AsrDataset(), valid_sampler, cfg.data.num_workers)

    # ------------------------------------------------------------------ checkpoints

    def _resume(self) -> bool:
        """Load the checkpoint named by start_epoch/start_batch; False for a fresh start."""
        cfg = self.cfg
        path = resume_checkpoint(cfg.exp_dir, cfg.start_epoch, cfg.start_batch)
        if path is None:
            return False
        progress = load_checkpoint(
            path, unwrap(self.model), cfg.model, self.optimizer, self.scaler, self.rank, self.device
        )
        self.step, self.epoch = progress.step, progress.epoch
        self.batch_in_epoch, self.train_seconds = progress.batch_in_epoch, progress.train_seconds
        logging.info(
            f"Resumed from {path}: epoch {self.epoch}, {self.batch_in_epoch} batches into it, "
            f"step {self.step}"
        )
        return True

    def save(self, path: Path) -> None:
        """Write a checkpoint (rank 0 writes; all ranks' RNG states are kept)."""
        rngs = gather_objects(rng_state(self.device), self.world_size)
        if self.rank != 0:
            return
        progress = Progress(self.step, self.epoch, self.batch_in_epoch, self.train_seconds)
        save_checkpoint(
            path,
            unwrap(self.model),
            self.cfg.model,
            self.optimizer,
            self.scaler,
            progress,
            rngs,
            self.cfg.bpe_model,
        )
        logging.info(f"Saved {path}")

    # ------------------------------------------------------------------ loops

    def train_step(self, batch: Dict) -> Optional[Tuple[Dict[str, float], float]]:
        """One update on ``batch`` (frame-KD targets, forward, backward, clipping,
        optimizer step): its statistics (see :func:`compute_loss`) and gradient norm,
        or None when the loss was not finite (the batch is skipped and counted)."""
        cfg = self.cfg
        teacher = self._teacher_targets(batch)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=cfg.use_fp16):
            loss, stats = compute_loss(
                self.model,
                batch,
                self.sp,
                cfg.loss,
                self.device,
                step=self.step,
                teacher=teacher,
                sequence_kd=cfg.sequence_kd,
            )
        self.batch_in_epoch += 1
        self.step += 1
        if not all_ranks(bool(torch.isfinite(loss).all()), self.device, self.world_size):
            self.num_nonfinite += 1
            logging.warning(
                f"Non-finite loss at step {self.step} (cuts {[c.id for c in batch['cuts']][:4]}"
                f"...): batch skipped ({self.num_nonfinite} so far)"
            )
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return stats, float(grad_norm)

    def _teacher_targets(self, batch: Dict) -> Optional[TeacherTargets]:
        """The teacher's side of ``batch`` (None: no frame-level or layer-wise KD)."""
        cfg, model = self.cfg, unwrap(self.model)
        frame, layers = None, None
        if cfg.frame_kd.enabled:
            runs_teacher = self.teacher if cfg.frame_kd.runs_teacher else None
            frame = frame_kd_targets(batch, cfg.frame_kd.cut_fields(), runs_teacher, self.device)
        if model.layerwise_kd is not None:
            layers = layerwise_teacher_targets(batch, self.teacher, model.layerwise_kd, self.device)
        return None if frame is None and layers is None else TeacherTargets(frame, layers)

    def train_one_epoch(self) -> Dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        self.train_cuts.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.train_loader.dataset.set_epoch(self.epoch)  # before the workers copy it
        self.sampler.skip = self.batch_in_epoch
        self.cut_filter.reset()
        totals: Dict[str, float] = {}
        progress = EpochProgress(
            self.epoch, self.expected_batches, self.batch_in_epoch, cfg.log_interval, self.tb,
            show_bar=self.rank == 0,
        )  # fmt: skip
        for batch in self.train_loader:
            lr = eden_lr(cfg.optim, self.step, self.epoch - 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            result = self.train_step(batch)
            if result is None:
                continue
            stats, grad_norm = result
            stats["batches"] = 1.0
            stats["audio_seconds"] = float(batch["speech_feature_lens"].sum()) * FBANK_FRAME_SHIFT
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            progress.update(self.step, self.batch_in_epoch, stats, lr, grad_norm)
            if cfg.save_every_n > 0 and self.step % cfg.save_every_n == 0:
                self.save(batch_checkpoint(cfg.exp_dir, self.step))
                if self.rank == 0:
                    remove_old_checkpoints(cfg.exp_dir, cfg.keep_last_k)
        progress.close()
        return totals

    def check_trained(self, totals: Dict[str, float]) -> str:
        """What the epoch trained over all ranks (also :attr:`epoch_audio_seconds`); an
        epoch without a trained batch is an error."""
        done = torch.tensor([totals.get("batches", 0.0), totals.get("audio_seconds", 0.0)])
        batches, seconds = sum_over_ranks(done.to(self.device), self.world_size).tolist()
        self.epoch_audio_seconds, d = seconds, self.cfg.data
        if batches == 0:
            raise RuntimeError(
                f"Epoch {self.epoch} trained no batch of {[str(p) for p in d.train_cuts]}: "
                f"non-finite batches {self.num_nonfinite}, dropped cuts "
                f"{self.cut_filter.num_dropped} (outside {d.min_duration}-{d.max_cut_duration}"
                f" s or fewer frames than tokens). Check --max-duration ({d.max_duration} s)."
            )
        return f"{int(batches)} batches, {seconds / 3600:.2f} h of audio"

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        model = self.model
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for batch in self.valid_loader:
            _, stats = compute_loss(
                model, batch, self.sp, self.cfg.loss, self.device, step=self.step
            )
            totals += torch.tensor(
                [stats["frames"], stats["simple_loss"], stats["pruned_loss"]],
                dtype=torch.float64,
                device=self.device,
            )
        sum_over_ranks(totals, self.world_size)
        model.train()
        frames, simple, pruned = totals.tolist()
        return {"simple_loss": simple / frames, "pruned_loss": pruned / frames}

    def train(self) -> None:
        cfg = self.cfg
        model = unwrap(self.model)
        logging.info(
            f"Training {model.student.num_params() / 1e6:.2f} M parameters on {self.device} "
            f"(world size {self.world_size}), epochs {self.epoch}..{cfg.num_epochs}"
        )
        while self.epoch <= cfg.num_epochs:
            t0 = time.time()
            totals = self.train_one_epoch()
            trained = self.check_trained(totals)
            valid = self.validate()
            frames = max(totals.get("frames", 0.0), 1.0)
            logging.info(
                f"Epoch {self.epoch} done in {time.time() - t0:.0f} s: {trained}, train loss "
                f"{totals.get('loss', math.nan) / frames:.4f}, valid simple "
                f"{valid['simple_loss']:.4f} pruned {valid['pruned_loss']:.4f}; dropped cuts "
                f"{self.cut_filter.num_dropped}, non-finite batches {self.num_nonfinite}"
            )
            if self.rank == 0 and self.cut_filter.dropped:
                self.cut_filter.write(cfg.exp_dir / f"dropped-cuts-epoch-{self.epoch}.txt")
            if self.tb is not None:
                for k, v in valid.items():
                    self.tb.add_scalar(f"valid/{k}", v, self.step)
            self.train_seconds += time.time() - t0
            self.epoch += 1
            self.batch_in_epoch = 0
            self.save(epoch_checkpoint(cfg.exp_dir, self.epoch - 1))
        if self.rank == 0:
            summary = {
                "params": model.student.num_params(),
                "epochs": self.epoch - 1,
                "train_seconds": round(self.train_seconds, 1),
                "world_size": self.world_size,
                "device": str(self.device),
                "distillation": cfg.distillation_summary(),
            }
            with atomic_path(cfg.exp_dir / "train-summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1) + "\n")
        if self.tb is not None:
            self.tb.close()


def run(cfg: TrainConfig) -> None:
    """Entry point: within this process's process group (under torchrun), train."""
    with process_group(cfg.device) as (rank, world_size):
        Trainer(cfg, rank, world_size).train()
