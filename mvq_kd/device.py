"""Devices and torch.distributed: which device a process uses, its process group, and
the few collective operations the training loop needs (no-ops in a single process).

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` for multi-GPU and multi-node
runs (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, List, Tuple

import torch
import torch.distributed as dist


def pick_device(name: str, rank: int = 0) -> torch.device:
    """``"auto"``: this rank's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU;
    otherwise the named device (``cpu``, ``cuda``, ``cuda:1``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        return torch.device("cpu")
    return torch.device(name)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Tuple[int, int]]:
    """This process's ``(rank, world size)``; under ``torchrun`` (world size > 1) a process
    group lives for the duration (NCCL unless ``device`` is ``cpu`` or there is no GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    try:
        yield rank, world_size
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def gather_objects(obj: Any, world_size: int) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_ranks(flag: bool, device: torch.device, world_size: int) -> bool:
    """True when ``flag`` is true on every rank."""
    ok = torch.tensor([float(flag)], device=device)
    if world_size > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


def sum_over_ranks(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """``t`` summed over the ranks, in place (``t`` itself in a single process)."""
    if world_size > 1:
        dist.all_reduce(t)
    return t
