"""Where a training epoch stands: a progress bar with the batch total and ETA, the periodic
log line and the TensorBoard scalars of :class:`mvq_kd.trainer.Trainer`."""

from __future__ import annotations

import logging
import math
import time
from typing import Dict, Optional

from mvq_kd.loss import per_frame


def expected_batches(total_seconds: float, max_duration: float, world_size: int) -> int:
    """This rank's batches in an epoch of ``total_seconds`` of audio: dynamic bucketing
    fills batches to about 90% of ``max_duration`` (an estimate for the bar's total)."""
    return max(1, math.ceil(total_seconds / (0.9 * max_duration) / world_size))


class EpochProgress:
    """One epoch on this rank: :meth:`update` after each trained batch.

    Args:
        epoch: the epoch (1-based).
        total: the estimated batches of the epoch (:func:`expected_batches`).
        done: batches already trained (an epoch resumed in the middle).
        log_interval: steps between log lines (and TensorBoard points).
        tb: a ``SummaryWriter``, or None.
        show_bar: draw the bar (rank 0).
    """

    def __init__(
        self,
        epoch: int,
        total: Optional[int],
        done: int,
        log_interval: int,
        tb=None,
        show_bar: bool = True,
    ) -> None:
        from tqdm import tqdm

        self.epoch, self.log_interval, self.tb = epoch, log_interval, tb
        self.bar = tqdm(
            total=max(total, done) if total else None,
            initial=done,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not show_bar,
            mininterval=10.0,
            leave=False,
        )
        self.t0, self.seconds = time.time(), 0.0

    def update(
        self, step: int, batch: int, stats: Dict[str, float], lr: float, grad_norm: float
    ) -> None:
        """After training batch ``batch`` of the epoch (``step`` over all epochs)."""
        self.seconds += stats["audio_seconds"]
        speed = self.seconds / max(time.time() - self.t0, 1e-9)
        if self.bar.total is not None and batch > self.bar.total:
            self.bar.total = batch  # the estimate was short
        self.bar.set_postfix_str(f"{speed:.0f} s audio/s", refresh=False)
        self.bar.update(1)
        if step % self.log_interval:
            return
        losses = [k for k in stats if k.endswith("_loss")]
        parts = ", ".join(f"{k.removesuffix('_loss')} {per_frame(stats, k):.4f}" for k in losses)
        logging.info(
            f"epoch {self.epoch} batch {batch}/~{self.bar.total or '?'} step {step}: loss "
            f"{stats['loss'] / stats['frames']:.4f} ({parts}) lr {lr:.2e} grad-norm "
            f"{grad_norm:.2f} {speed:.1f} s audio/s"
        )
        if self.tb is not None:
            for k in ["loss", *losses]:
                self.tb.add_scalar(f"train/{k}", per_frame(stats, k), step)
            self.tb.add_scalar("train/lr", lr, step)
            self.tb.add_scalar("train/grad_norm", grad_norm, step)
        self.t0, self.seconds = time.time(), 0.0

    def close(self) -> None:
        self.bar.close()
