"""Checkpoint files: their format (declared once), saving, exact resume, averaging, loading.

``train.py`` writes ``<exp-dir>/epoch-<E>.pt`` after every epoch and
``checkpoint-<step>.pt`` every ``--save-every-n`` batches; ``decode.py``, the teachers
and the N-best stage load the student of averaged ``epoch-*.pt``. A checkpoint is a
dict with the keys below; the student (``model``) is kept apart from the
training-only distillation modules (:data:`KD_MODULES`), so that decoding loads the
student alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from mvq_kd.model.transducer import Transducer, TransducerConfig
from mvq_kd.utils import atomic_path

# The keys of a checkpoint dict.
MODEL = "model"  # the student's state dict
MODEL_CONFIG = "model_config"  # TransducerConfig.to_dict()
OPTIMIZER = "optimizer"
GRAD_SCALER = "grad_scaler"
STEP = "step"  # batches trained, over all epochs
EPOCH = "epoch"  # the epoch in progress (the next one after an epoch checkpoint)
BATCH_IN_EPOCH = "batch_in_epoch"  # batches of EPOCH already trained
TRAIN_SECONDS = "train_seconds"  # wall time of finished epochs (absent in old files)
RNG = "rng"  # per rank: {"torch", "python", "numpy", "cuda"} RNG states
BPE_MODEL = "bpe_model"  # path of the BPE model (informative)

# The training-only modules of a TrainingModel: attribute, checkpoint key, what they do.
KD_MODULES = (
    ("frame_kd", "kd_modules", "frame-level KD"),
    ("layerwise_kd", "layerwise_modules", "layer-wise KD"),
)


def epoch_checkpoint(exp_dir: Path, epoch: int) -> Path:
    return Path(exp_dir) / f"epoch-{epoch}.pt"


def batch_checkpoint(exp_dir: Path, step: int) -> Path:
    return Path(exp_dir) / f"checkpoint-{step}.pt"


def resume_checkpoint(exp_dir: Path, start_epoch: int, start_batch: int) -> Optional[Path]:
    """The checkpoint a run starting at ``start_epoch`` / ``start_batch`` resumes from
    (``checkpoint-<start_batch>.pt`` or ``epoch-<start_epoch - 1>.pt``; None: a fresh
    start). A missing file is an error."""
    if start_batch > 0:
        path = batch_checkpoint(exp_dir, start_batch)
    elif start_epoch > 1:
        path = epoch_checkpoint(exp_dir, start_epoch - 1)
    else:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"Cannot resume: no checkpoint {path}")
    return path


def remove_old_checkpoints(exp_dir: Path, keep_last_k: int) -> None:
    """Delete all but the newest ``keep_last_k`` ``checkpoint-<step>.pt``."""
    ckpts = sorted(Path(exp_dir).glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    for old in ckpts[:-keep_last_k]:
        old.unlink()


@dataclass
class Progress:
    """Where training stands (saved with every checkpoint)."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    train_seconds: float = 0.0


def rng_state(device: torch.device) -> Dict:
    """This process's RNG states (torch, python, numpy and, on a GPU, CUDA)."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(rng: Dict, device: torch.device) -> None:
    """Restore :func:`rng_state`'s states."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    model_config: TransducerConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    rngs: List[Dict],
    bpe_model: Path,
) -> None:
    """Write a training checkpoint atomically.

    Args:
        model: a ``TrainingModel`` (``student`` and the :data:`KD_MODULES` it has).
        rngs: every rank's :func:`rng_state`, in rank order.
    """
    ckpt = {
        MODEL: model.student.state_dict(),
        MODEL_CONFIG: model_config.to_dict(),
        OPTIMIZER: optimizer.state_dict(),
        GRAD_SCALER: scaler.state_dict(),
        STEP: progress.step,
        EPOCH: progress.epoch,
        BATCH_IN_EPOCH: progress.batch_in_epoch,
        TRAIN_SECONDS: progress.train_seconds,
        RNG: rngs,
        BPE_MODEL: str(bpe_model),
    }
    for attr, key, _ in KD_MODULES:
        if getattr(model, attr) is not None:
            ckpt[key] = getattr(model, attr).state_dict()
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    model_config: TransducerConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
    device: torch.device,
) -> Progress:
    """Restore a :func:`save_checkpoint` file into a run of the same options: weights,
    optimizer, grad scaler and this rank's RNG states. Returns where training stands."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt[MODEL_CONFIG] != model_config.to_dict():
        raise ValueError(f"{path} was trained with another model config: {ckpt[MODEL_CONFIG]}")
    model.student.load_state_dict(ckpt[MODEL])
    for attr, key, what in KD_MODULES:
        module = getattr(model, attr)
        if module is None:
            continue
        if key not in ckpt:
            raise ValueError(
                f"{path} has no {key}: it was trained without {what}; resume it with the "
                "options it was trained with"
            )
        module.load_state_dict(ckpt[key])
    optimizer.load_state_dict(ckpt[OPTIMIZER])
    scaler.load_state_dict(ckpt[GRAD_SCALER])
    set_rng_state(ckpt[RNG][min(rank, len(ckpt[RNG]) - 1)], device)
    return Progress(ckpt[STEP], ckpt[EPOCH], ckpt[BATCH_IN_EPOCH], ckpt.get(TRAIN_SECONDS, 0.0))


def average_checkpoints(paths: Sequence[Path]) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Average the student weights of several checkpoints (floating-point tensors only).

    Returns:
        the averaged state dict and the model config dict of the last checkpoint
        (all must share it).
    """
    if not paths:
        raise ValueError("No checkpoints to average")
    avg: Dict[str, torch.Tensor] = {}
    config = None
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"No checkpoint {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if config is not None and ckpt[MODEL_CONFIG] != config:
            raise ValueError(f"{path} has another model config than {paths[0]}")
        config = ckpt[MODEL_CONFIG]
        for k, v in ckpt[MODEL].items():
            if v.is_floating_point():
                avg[k] = avg[k] + v.double() if k in avg else v.double()
            else:
                avg[k] = v
    return {
        k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in avg.items()
    }, config


def load_model(
    exp_dir: Path, epoch: int, avg: int, device: torch.device
) -> Tuple[Transducer, List[Path]]:
    """The student of ``epoch-(epoch-avg+1).pt .. epoch-<epoch>.pt``, averaged, in eval
    mode, and the files it came from (the distillation modules are not loaded)."""
    if avg < 1 or avg > epoch:
        raise ValueError(f"--avg must be in 1..{epoch} for --epoch {epoch}, got {avg}")
    paths = [epoch_checkpoint(exp_dir, e) for e in range(epoch - avg + 1, epoch + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        have = sorted(
            int(m.group(1))
            for p in Path(exp_dir).glob("epoch-*.pt")
            if (m := re.fullmatch(r"epoch-(\d+)\.pt", p.name))
        )
        raise FileNotFoundError(
            f"No {', '.join(missing)} in {exp_dir} for --epoch {epoch} --avg {avg}; "
            + (f"it has epochs {', '.join(map(str, have))}" if have else "it has no epoch-N.pt")
        )
    state, config = average_checkpoints(paths)
    model = Transducer(TransducerConfig.from_dict(config))
    model.load_state_dict(state)
    return model.to(device).eval(), paths
