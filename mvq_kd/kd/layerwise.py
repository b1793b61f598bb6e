"""Layer-wise distillation from a non-streaming teacher into a streaming student through
auxiliary non-streaming layers (Shim et al., Interspeech 2023).

At each connected student layer ``l`` a training-only :class:`AuxiliaryBranch` maps the
student's frames ``h^l`` (B, T, C) to the teacher's width and gives them the full
context the streaming student lacks:

* ``x = Linear(LayerNorm(h^l))``: (B, T, D) with ``D`` the teacher's dim;
* ``a = Transformer(x)``: one pre-norm self-attention + feed-forward layer over the
  whole utterance (non-streaming); its queries, keys and values are kept;
* ``z = LSTM(a)``: one unidirectional LSTM, (B, T, D).

Losses per connection ``(l, m)`` with teacher layer ``m`` (its output ``y`` (B, T, D)
and its attention ``q, k, v``), padding frames excluded, each summed over valid frames
(the training step divides every loss by the batch's frame count):

* feature: ``-log sigmoid(cos(y_t, a_t))`` (minimum ``-log sigmoid(1) = 0.313``);
* attention relations: ``KL(softmax(X_t X^T / sqrt(d)) || softmax(X'_t X'^T / sqrt(d)))``
  for ``X`` in queries, keys and values of the teacher and ``X'`` of the branch, per
  teacher head (the branch's features are split into the teacher's head count, so the
  two may differ), mean over heads, summed over QQ, KK and VV;
* future prediction (APC): ``-log sigmoid(cos(y_{t+k}, z_t))`` for ``t + k`` valid.
  With APC on, the branch's attention lets frame ``t`` see student frames ``< t + k``
  only, so ``z_t`` cannot read the frame whose teacher feature it predicts.

The branches never touch the student's own computation: the streaming encoder stays as
it is, and checkpoints keep the branches apart from the student (``layerwise_modules``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mvq_kd.cli import option
from mvq_kd.model.encoder import FeedForward, RotarySelfAttention, attention_mask, valid_mask
from mvq_kd.teacher import TeacherLayers

# -log sigmoid(1): the feature / APC loss per frame of identical directions.
MIN_COSINE_LOSS = -math.log(1.0 / (1.0 + math.exp(-1.0)))


@dataclass
class LayerwiseKdConfig:
    """Which layer-wise distillation losses to use, and where.

    Attributes:
        student_layers: 1-based student layers with an auxiliary branch (empty: the
            default map of :func:`default_layer_map` with ``num_connections``).
        teacher_layers: the teacher layer of each student layer (same length).
        num_connections: connections of the default map.
        feature_loss_scale: weight of the feature-similarity loss (0: off).
        attention_loss_scale: weight of the attention-relation loss (0: off).
        apc_loss_scale: weight of the future-prediction loss (0: off).
        apc_shift: ``k``, frames ahead the LSTM predicts.
    """

    student_layers: Tuple[int, ...] = option(
        (),
        "1-based student layers with an auxiliary branch (default: --layerwise-connections "
        "evenly spaced layers)",
        flag="--layerwise-student-layers",
        nargs="+",
    )
    teacher_layers: Tuple[int, ...] = option(
        (),
        "the teacher layer of each --layerwise-student-layers",
        flag="--layerwise-teacher-layers",
        nargs="+",
    )
    num_connections: int = option(
        4,
        "connections of the default map (16 / 16 layers, 4: 4-4, 8-8, 12-12, 16-16)",
        flag="--layerwise-connections",
    )
    feature_loss_scale: float = option(
        0.0, "weight of -log sigmoid(cos) between teacher and auxiliary features (0: off)"
    )
    attention_loss_scale: float = option(
        0.0, "weight of the QQ/KK/VV attention-relation KL (0: off)"
    )
    apc_loss_scale: float = option(0.0, "weight of the future-prediction (APC) loss (0: off)")
    apc_shift: int = option(2, "APC: frames ahead to predict")

    def __post_init__(self) -> None:
        self.student_layers = tuple(self.student_layers)
        self.teacher_layers = tuple(self.teacher_layers)
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"student layers {self.student_layers} and teacher layers "
                f"{self.teacher_layers} must pair up (same count)"
            )
        if min(self.feature_loss_scale, self.attention_loss_scale, self.apc_loss_scale) < 0:
            raise ValueError("layer-wise KD loss scales must be >= 0")
        if self.attention_loss_scale > 0 and not (self.feature_loss_scale or self.apc_loss_scale):
            raise ValueError(
                "the attention-relation loss alone leaves the auxiliary layers' feed-forward "
                "without gradient: add the feature or the APC loss"
            )
        if self.apc_shift < 1:
            raise ValueError(f"apc_shift must be >= 1 frame, got {self.apc_shift}")
        if self.num_connections < 1:
            raise ValueError(f"num_connections must be >= 1, got {self.num_connections}")

    @property
    def enabled(self) -> bool:
        return max(self.feature_loss_scale, self.attention_loss_scale, self.apc_loss_scale) > 0

    def layer_map(self, student_depth: int, teacher_depth: int) -> List[Tuple[int, int]]:
        """(student layer, teacher layer) pairs, 1-based, checked against the depths."""
        if self.student_layers:
            pairs = list(zip(self.student_layers, self.teacher_layers))
        else:
            pairs = default_layer_map(student_depth, teacher_depth, self.num_connections)
        for s, t in pairs:
            if not 1 <= s <= student_depth:
                raise ValueError(f"student layer {s} is not in 1..{student_depth}")
            if not 1 <= t <= teacher_depth:
                raise ValueError(f"teacher layer {t} is not in 1..{teacher_depth}")
        if len({s for s, _ in pairs}) != len(pairs):
            raise ValueError(f"a student layer is connected twice in {pairs}")
        return pairs


def default_layer_map(student_depth: int, teacher_depth: int, n: int) -> List[Tuple[int, int]]:
    """``n`` evenly spaced connections ending at the last layers: 16 / 16 / 4 ->
    (4, 4), (8, 8), (12, 12), (16, 16); 4 / 8 / 2 -> (2, 4), (4, 8). ``n`` is capped
    at the student's depth."""
    n = min(n, student_depth)
    return [
        (round(i * student_depth / n), max(1, round(i * teacher_depth / n)))
        for i in range(1, n + 1)
    ]


def lookahead_mask(num_frames: int, lookahead: Optional[int], device: torch.device) -> Tensor:
    """Bool (T, T), True where query frame ``i`` may attend key frame ``j``: every ``j``
    (``lookahead`` None), else ``j < i + lookahead``."""
    idx = torch.arange(num_frames, device=device)
    if lookahead is None:
        return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)
    return idx[None, :] < idx[:, None] + lookahead


@dataclass
class BranchOutput:
    """Output of :class:`AuxiliaryBranch`.

    Attributes:
        features: (B, T, D) the Transformer layer's output ``a``.
        qkv: its queries, keys and values, each (B, H, T, D / H).
        future: (B, T, D) the LSTM's output ``z`` (None: a branch without LSTM).
    """

    features: Tensor
    qkv: Tuple[Tensor, Tensor, Tensor]
    future: Optional[Tensor]


class AuxiliaryBranch(nn.Module):
    """Projection -> one non-streaming Transformer layer -> one unidirectional LSTM.

    ``with_lstm=False`` leaves the LSTM out (it only serves the APC loss; a module
    without gradient would break DDP).
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        with_lstm: bool = True,
    ) -> None:
        super().__init__()
        if teacher_dim % num_heads or (teacher_dim // num_heads) % 2:
            raise ValueError(
                f"the auxiliary layer's {num_heads} heads must split the teacher dim "
                f"{teacher_dim} into even head dims"
            )
        self.proj = nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, teacher_dim))
        self.norm_attn = nn.LayerNorm(teacher_dim)
        self.attn = RotarySelfAttention(teacher_dim, num_heads, dropout)
        self.ff = FeedForward(teacher_dim, ffn_dim, dropout)
        self.lstm = nn.LSTM(teacher_dim, teacher_dim, batch_first=True) if with_lstm else None

    def forward(self, h: Tensor, lens: Tensor, lookahead: Optional[int]) -> BranchOutput:
        """h: (B, T, C) student layer output, lens: (B,) valid frames; ``lookahead``:
        frame ``t`` attends frames ``< t + lookahead`` (None: all valid frames)."""
        t = h.size(1)
        mask = attention_mask(lookahead_mask(t, lookahead, h.device), lens)
        x = self.proj(h)
        a, qkv = self.attn(self.norm_attn(x), mask)
        x = x + a
        x = x + self.ff(x)
        # Unidirectional: frames after an utterance's end cannot reach its valid frames.
        z = self.lstm(x)[0] if self.lstm is not None else None
        return BranchOutput(features=x, qkv=qkv, future=z)


def cosine_loss(target: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
    """``sum -log sigmoid(cos(target_t, pred_t))`` over frames where mask (B, T) is
    True; target, pred: (B, T, D)."""
    cos = F.cosine_similarity(target.float(), pred.float(), dim=-1, eps=1e-6)
    return (-F.logsigmoid(cos) * mask).sum()


def relation_kl(teacher: Tensor, student: Tensor, lens: Tensor, num_heads: int) -> Tensor:
    """Self-relation KL of one of Q, K, V, summed over valid query frames.

    Args:
        teacher: (B, Ht, T, Dt) the teacher's vectors, ``Ht = num_heads``.
        student: (B, Hs, T, Ds) the branch's vectors, any ``Hs`` with
            ``Hs * Ds = Ht * Dt``: re-split into ``Ht`` heads.
        lens: (B,) valid frames.

    Returns:
        ``sum_t mean_h KL(R_teacher[h, t] || R_student[h, t])`` with
        ``R[h, t] = softmax_j(x_t . x_j / sqrt(d))`` over valid keys ``j``.
    """
    b, hs, t, ds = student.shape
    if hs * ds != teacher.size(1) * teacher.size(3):
        raise ValueError(
            f"attention relations need equal widths: teacher {teacher.size(1)} x "
            f"{teacher.size(3)}, branch {hs} x {ds}"
        )
    student = student.transpose(1, 2).reshape(b, t, num_heads, -1).transpose(1, 2)
    valid = valid_mask(lens, t)  # (B, T)

    def log_relation(x: Tensor) -> Tensor:
        x = x.float()
        scores = x @ x.transpose(-1, -2) / math.sqrt(x.size(-1))  # (B, H, T, T)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        return scores.log_softmax(dim=-1)

    log_t, log_s = log_relation(teacher), log_relation(student)
    p_t = log_t.exp()
    # 0 * log 0 terms (masked keys) are 0.
    kl = torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t)).sum(-1)  # (B, H, T)
    return (kl.mean(1) * valid).sum()


def relation_loss(teacher: Tensor, student: Tensor, lens: Tensor, num_heads: int) -> Tensor:
    """:func:`relation_kl`, its (B, H, T, T) relation maps recomputed in the backward
    pass instead of kept (with gradients on): about 2.5 maps per relation otherwise, ~8 GB
    for 4 connections at LibriSpeech batch sizes."""
    if not (torch.is_grad_enabled() and student.requires_grad):
        return relation_kl(teacher, student, lens, num_heads)
    return checkpoint(relation_kl, teacher, student, lens, num_heads, use_reentrant=False)


class LayerwiseKd(nn.Module):
    """The auxiliary branches and losses of layer-wise KD.

    Args:
        cfg: losses and connections.
        student_dim, student_depth: the student encoder's width and depth.
        teacher_dim, teacher_depth, teacher_heads: the teacher encoder's.
        dropout: of the branches' Transformer layers.
    """

    def __init__(
        self,
        cfg: LayerwiseKdConfig,
        student_dim: int,
        student_depth: int,
        teacher_dim: int,
        teacher_depth: int,
        teacher_heads: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pairs = cfg.layer_map(student_depth, teacher_depth)
        self.teacher_heads = teacher_heads
        self.apc_shift = cfg.apc_shift
        # Loss name -> weight (the training step sums ``scale * loss``).
        self.scales = {
            "feature_loss": cfg.feature_loss_scale,
            "attention_loss": cfg.attention_loss_scale,
            "apc_loss": cfg.apc_loss_scale,
        }
        apc = cfg.apc_loss_scale > 0
        self.branches = nn.ModuleList(
            AuxiliaryBranch(
                student_dim, teacher_dim, teacher_heads, 4 * teacher_dim, dropout, with_lstm=apc
            )
            for _ in self.pairs
        )

    @property
    def teacher_layers(self) -> List[int]:
        """The 1-based teacher layers the losses need."""
        return sorted({t for _, t in self.pairs})

    @property
    def needs_qkv(self) -> bool:
        return self.scales["attention_loss"] > 0

    def forward(
        self, layers: List[Tensor], lens: Tensor, teacher: TeacherLayers
    ) -> Dict[str, Tensor]:
        """Unscaled losses, each summed over valid frames and connections.

        Args:
            layers: the student's per-layer outputs, each (B, T, C).
            lens: (B,) valid student frames.
            teacher: the teacher's layers on the same (clean) input; its frames must
                be the student's (a length difference of up to 2 frames is trimmed).

        Returns:
            ``feature_loss``, ``attention_loss``, ``apc_loss`` (those whose scale > 0).
        """
        t = min(layers[0].size(1), next(iter(teacher.outputs.values())).size(1))
        if (lens - teacher.lens).abs().max() > 2:
            raise ValueError(
                f"student and teacher frames differ by more than 2 (student {lens.tolist()}, "
                f"teacher {teacher.lens.tolist()}): layer-wise KD needs the teacher's frame rate"
            )
        lens = torch.minimum(torch.minimum(lens, teacher.lens), lens.new_tensor(t))
        valid = valid_mask(lens, t)
        apc = self.scales["apc_loss"] > 0
        losses: Dict[str, Tensor] = {}

        def add(name: str, value: Tensor) -> None:
            losses[name] = losses[name] + value if name in losses else value

        for (s, m), branch in zip(self.pairs, self.branches):
            out = branch(layers[s - 1][:, :t], lens, self.apc_shift if apc else None)
            y = teacher.outputs[m][:, :t]
            if self.scales["feature_loss"] > 0:
                add("feature_loss", cosine_loss(y, out.features, valid))
            if self.needs_qkv:
                tq = teacher.qkv[m]
                add(
                    "attention_loss",
                    sum(
                        relation_loss(tx[:, :, :t], sx, lens, self.teacher_heads)
                        for tx, sx in zip(tq, out.qkv)
                    ),
                )
            if apc:
                k = self.apc_shift
                add("apc_loss", cosine_loss(y[:, k:], out.future[:, : t - k], valid[:, k:]))
        return losses
