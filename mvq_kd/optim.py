"""The optimizers of :class:`mvq_kd.trainer.Trainer` (``--optimizer``) and its learning rate.

:class:`ScaledAdam` follows the idea of icefall's ScaledAdam (Zipformer paper, Yao et al.
2024): the step of each weight tensor is Adam's direction times the tensor's own RMS, so
every matrix changes by the same *relative* amount whatever its scale, plus a learned
step on the tensor's overall size. Wide or deep models then train at one learning rate,
where AdamW needs a rate tuned to the smallest layers (a 6 x 192 Conformer never left the
blank plateau with AdamW here). Simplified: vectors and scalars (biases, norm gains) take
plain Adam steps at ``lr * vector_lr_scale``; gradient clipping stays the trainer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Tuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mvq_kd.config import OptimConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: "OptimConfig") -> torch.optim.Optimizer:
    """``cfg.optimizer``: ``adamw`` (``weight_decay`` applies) or ``scaled_adam``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "scaled_adam":
        return ScaledAdam(params, lr=cfg.base_lr)
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}: choose adamw or scaled_adam")


def eden_lr(cfg: "OptimConfig", step: int, epoch: int) -> float:
    """Learning rate after ``step`` batches in (0-based) ``epoch``: linear warm-up, then
    icefall's Eden decay in batches and in epochs."""
    warm = min(1.0, (step + 1) / cfg.warmup_batches)
    b = ((step**2 + cfg.lr_batches**2) / cfg.lr_batches**2) ** -0.25
    e = ((epoch**2 + cfg.lr_epochs**2) / cfg.lr_epochs**2) ** -0.25
    return cfg.base_lr * warm * b * e


class ScaledAdam(torch.optim.Optimizer):
    """Adam with parameter-scale-relative steps for tensors of two or more dimensions.

    For a weight ``p`` (``p.dim() >= 2``) with gradient ``g`` at step ``t``::

        d = m_t / (sqrt(v_t) + eps)            # Adam's direction (bias-corrected)
        s = sum(g * p)                          # gradient of the loss w.r.t. log|p|
        p <- p - lr * rms(p) * d - lr * size_lr_scale * p * s / sqrt(v_s)

    with ``rms(p)`` clamped to ``[param_min_rms, param_max_rms]``.

    Args:
        params: parameters (or parameter groups).
        lr: the relative step of a weight tensor per update (icefall uses ~0.045).
        betas: Adam's moment decays.
        eps: Adam's epsilon.
        size_lr_scale: the step on each weight's overall size, relative to ``lr``.
        vector_lr_scale: the Adam learning rate of biases and gains, relative to ``lr``.
        param_min_rms, param_max_rms: clamp of the RMS a weight's step is relative to.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 0.04,
        betas: Tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        size_lr_scale: float = 0.1,
        vector_lr_scale: float = 0.05,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            size_lr_scale=size_lr_scale,
            vector_lr_scale=vector_lr_scale,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer.step)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if p.dim() >= 2:
                        state["size_exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bc1, bc2 = 1 - beta1**t, 1 - beta2**t
                direction = (m / bc1) / ((v / bc2).sqrt() + group["eps"])
                lr = group["lr"]
                if p.dim() < 2:
                    p.add_(direction, alpha=-lr * group["vector_lr_scale"])
                    continue
                rms = _rms(p).clamp(group["param_min_rms"], group["param_max_rms"])
                size_grad = (g * p).sum()
                sv = state["size_exp_avg_sq"]
                sv.mul_(beta2).add_(size_grad**2, alpha=1 - beta2)
                size_step = size_grad / ((sv / bc2).sqrt() + group["eps"])
                p.mul_(1 - lr * group["size_lr_scale"] * size_step)
                p.add_(direction * rms, alpha=-lr)
        return loss


def _rms(x: Tensor) -> Tensor:
    return x.detach().float().pow(2).mean().sqrt().to(x.dtype)
