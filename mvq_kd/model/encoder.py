"""Conformer encoder with chunk-wise (simulated and true) streaming.

Shapes: ``B`` batch, ``T`` input (fbank) frames, ``F`` feature dim, ``T'`` encoder
frames after 4x subsampling, ``D`` model dim, ``H`` heads, ``Dh = D / H``.

Design choices
--------------
* **Subsampling**: two ``Conv2d(kernel 3, stride 2)`` over (time, freq) without
  padding, then a linear projection: ``T' = ((T - 1) // 2 - 1) // 2``. Encoder frame
  ``t`` sees input frames ``4t .. 4t + 6``. Streaming caches the input frames not
  consumed yet, so chunk-wise subsampling is exact.
* **Positions**: rotary position embeddings (RoPE) on ``q`` and ``k`` by absolute
  frame index. Attention scores then depend only on the relative offset, and the
  cached keys of a streaming model stay valid as they are (rotated once, when made).
  There is no other positional encoding.
* **Block**: macaron Conformer, ``x + FFN/2 -> x + MHSA -> x + Conv -> x + FFN/2``,
  all sub-modules pre-norm, and one LayerNorm after the last block. The original
  Conformer also normalises the output of every block; on the synthetic corpus that
  kept a 4 x 192 CTC encoder on the blank plateau for more than 800 updates where the
  pure pre-norm stack left it after ~300 (``egs/synth/RESULTS.md``). The convolution
  module normalises with LayerNorm (per frame), so streaming equals the masked
  forward exactly.
* **Streaming** (``causal=True``): causal depthwise convolution (left pad
  ``kernel - 1``) and chunk attention masks. With chunk size ``c`` and left context
  ``L``, frame ``i`` attends frame ``j`` iff ``j // c <= i // c`` and
  ``j >= (i // c) * c - L`` (``L = -1``: unlimited, ``c = -1``: full context).
  :meth:`ConformerEncoder.streaming_forward` computes the same thing chunk by chunk
  from raw fbank frames with caches.
* **Half-rate middle layers** (``half_rate_layers = N``, non-causal encoders; in the
  spirit of Zipformer's downsampled stacks): layers ``2 .. N + 1`` run at half the
  frame rate (80 ms). Their input is the mean of each pair of valid frames; what they
  add to it is repeated back to 40 ms and added to the full-rate stream, which the
  remaining layers continue. Attention, convolution and feed-forward cost of those
  layers halves; the output keeps the full frame rate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq_kd.cli import option

# Input frames one encoder frame needs beyond its own 4: frame t sees 4t .. 4t + 6.
SUBSAMPLING_FACTOR = 4
SUBSAMPLING_RIGHT_CONTEXT = 3
# Seconds per input (fbank) frame and per encoder frame.
FBANK_FRAME_SHIFT = 0.01
ENCODER_FRAME_SHIFT = SUBSAMPLING_FACTOR * FBANK_FRAME_SHIFT


@dataclass
class EncoderConfig:
    """Conformer encoder hyper-parameters.

    ``chunk_size`` and ``left_context`` count encoder frames (after subsampling; 25 Hz
    for 10 ms fbank, so 8 frames = 320 ms). They are the defaults of a causal model in
    eval mode and of :meth:`ConformerEncoder.init_state`; ``-1`` means full context
    (chunk) or unlimited left context. ``dynamic_chunk_training`` samples a chunk size
    and a left context per batch in training (causal models only): full context with
    probability ``full_context_prob``, otherwise a chunk size uniform in
    ``1 .. max_train_chunk_size`` and a left context that is unlimited half of the
    time and otherwise uniform in ``0 .. left_context``. ``subsampling_channels`` is
    the width of the 4x convolutional subsampling. ``half_rate_layers`` middle layers
    (from layer 2) run at half the frame rate (non-causal encoders only).
    """

    num_features: int = 80
    num_layers: int = option(12, "Conformer layers", flag="--num-encoder-layers")
    d_model: int = option(256, "encoder width", flag="--encoder-dim")
    num_heads: int = option(4, "attention heads")
    ffn_dim: int = option(1024, "feed-forward width", flag="--feedforward-dim")
    conv_kernel: int = option(31, "convolution module kernel (odd for non-causal models)")
    dropout: float = option(0.1, "dropout of the encoder layers")
    causal: bool = option(False, "streaming (causal) encoder")
    chunk_size: int = option(8, "decoding chunk of a causal model, in 40 ms encoder frames")
    left_context: int = option(32, "left context of a causal model in encoder frames (-1: all)")
    dynamic_chunk_training: bool = option(
        True, "causal models: train on a random chunk size and left context per batch"
    )
    max_train_chunk_size: int = 32
    full_context_prob: float = 0.25
    subsampling_channels: int = option(64, "channels of the 4x convolutional subsampling")
    half_rate_layers: int = option(
        0,
        "layers 2 .. N + 1 run at half the frame rate (80 ms), cutting their cost in half "
        "(non-causal encoders; 0: every layer at 40 ms)",
    )

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model={self.d_model} not divisible by num_heads={self.num_heads}")
        if (self.d_model // self.num_heads) % 2 != 0:
            raise ValueError("the head dim d_model / num_heads must be even for rotary embeddings")
        if not self.causal and self.conv_kernel % 2 != 1:
            raise ValueError("a non-causal model needs an odd conv_kernel (symmetric padding)")
        if self.num_features < 7:
            raise ValueError("num_features must be >= 7 for the 4x conv subsampling")
        if self.chunk_size == 0 or self.chunk_size < -1:
            raise ValueError("chunk_size must be positive or -1 (full context)")
        if self.left_context < -1:
            raise ValueError("left_context must be >= 0 or -1 (unlimited)")
        if self.max_train_chunk_size < 1:
            raise ValueError("max_train_chunk_size must be >= 1")
        if not 0 <= self.half_rate_layers <= max(self.num_layers - 2, 0):
            raise ValueError(
                f"half_rate_layers must be in 0..{max(self.num_layers - 2, 0)} (the first and "
                f"the last of the {self.num_layers} layers keep the full rate), got "
                f"{self.half_rate_layers}"
            )
        if self.half_rate_layers and self.causal:
            raise ValueError(
                "half_rate_layers needs a non-causal encoder: streaming (causal=True) keeps "
                "every layer at the full frame rate (use half_rate_layers 0)"
            )


@dataclass
class EncoderOutput:
    """Result of :meth:`ConformerEncoder.forward`.

    Attributes:
        out: (B, T', D) the encoder output: the final LayerNorm of ``layers[-1]``.
        out_lens: (B,) int64 valid frames per utterance.
        layers: every layer's output (the residual stream, not normalised), each
            (B, T', D); ``layers[0]`` is layer 1. A half-rate layer's entry is the
            full-rate stream plus what the half-rate layers added up to it.
        qkv: with ``return_qkv``, per layer ``(q, k, v)``, each (B, H, T', Dh); ``q``
            and ``k`` after the rotary embedding, so ``softmax(q k^T / sqrt(Dh))``
            with the padding/chunk mask is the layer's attention map. A half-rate
            layer's frames are repeated to T' (its map over frame pairs).
    """

    out: Tensor
    out_lens: Tensor
    layers: List[Tensor]
    qkv: Optional[List[Tuple[Tensor, Tensor, Tensor]]] = None


@dataclass
class EncoderState:
    """Caches of a causal encoder between :meth:`ConformerEncoder.streaming_forward` calls.

    Attributes:
        left_context: cached encoder frames kept per layer (-1: all).
        offset: encoder frames emitted so far (same for the whole batch).
        feat_cache: (B, n, F) raw input frames received but not consumed yet.
        num_feats: (B,) int64 valid input frames received so far.
        attn_cache: per layer ``(k, v)``, each (B, H, L', Dh), the rotated keys and
            the values of the last ``L' <= left_context`` frames.
        conv_cache: per layer (B, D, conv_kernel - 1), the last inputs of the causal
            depthwise convolution.
        chunk_lens: (B,) int64 valid frames of the chunk the last call returned.
    """

    left_context: int
    offset: int
    feat_cache: Tensor
    num_feats: Tensor
    attn_cache: List[Tuple[Tensor, Tensor]]
    conv_cache: List[Tensor]
    chunk_lens: Tensor


def valid_mask(lens: Tensor, num_frames: int) -> Tensor:
    """(B, T) bool, True at the frames below ``lens`` (B,), False at padding."""
    return torch.arange(num_frames, device=lens.device)[None, :] < lens[:, None]


def chunk_attention_mask(
    num_frames: int, chunk_size: int, left_context: int, device: torch.device
) -> Tensor:
    """Boolean (T', T') mask, True where query frame i may attend key frame j.

    ``j // chunk_size <= i // chunk_size`` and ``j >= (i // chunk_size) * chunk_size
    - left_context``; ``chunk_size = -1`` allows everything, ``left_context = -1``
    drops the second condition.
    """
    if chunk_size < 0:
        return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)
    idx = torch.arange(num_frames, device=device)
    chunk = idx // chunk_size
    mask = chunk[None, :] <= chunk[:, None]
    if left_context >= 0:
        mask &= idx[None, :] >= (chunk * chunk_size - left_context)[:, None]
    return mask


def attention_mask(pattern: Tensor, lens: Tensor) -> Tensor:
    """Bool (B, 1, T, T) self-attention mask, True = may attend: the (T, T) ``pattern``
    restricted to each utterance's valid keys (``lens`` (B,)). Every frame may attend
    itself, so no row is empty (rows of padding queries could be otherwise)."""
    t = pattern.size(0)
    mask = pattern[None] & valid_mask(lens, t)[:, None, :]
    idx = torch.arange(t, device=pattern.device)
    mask = mask | (idx[:, None] == idx[None, :])  # not torch.eye: ONNX Runtime lacks bool EyeLike
    return mask.unsqueeze(1)


def pair_mean(h: Tensor, lens: Tensor) -> Tuple[Tensor, Tensor]:
    """Half the frame rate: the mean of each pair of valid frames.

    Args:
        h: (B, T, D) frames; those at and past ``lens`` are padding.
        lens: (B,) int64 valid frames.

    Returns:
        (B, ceil(T / 2), D) pair means (an odd last valid frame alone; padding never
        enters a valid pair) and the (B,) valid lengths ``ceil(lens / 2)``.
    """
    b, t, d = h.shape
    t2 = (t + 1) // 2
    w = F.pad(valid_mask(lens, t).to(h.dtype), (0, 2 * t2 - t))  # no branch: ONNX export
    sums = (F.pad(h, (0, 0, 0, 2 * t2 - t)) * w.unsqueeze(-1)).view(b, t2, 2, d).sum(2)
    counts = w.view(b, t2, 2).sum(2).clamp(min=1.0)
    return sums / counts.unsqueeze(-1), (lens + 1) // 2


def repeat_pairs(x: Tensor, num_frames: int, dim: int = 1) -> Tensor:
    """Back to the full frame rate: each frame of ``x`` twice along ``dim``, cut to
    ``num_frames`` (inverse of :func:`pair_mean`'s frame layout)."""
    return x.repeat_interleave(2, dim=dim).narrow(dim, 0, num_frames)


class Conv2dSubsampling(nn.Module):
    """4x subsampling: (B, T, F) -> (B, T', D), ``T' = ((T - 1) // 2 - 1) // 2``.

    ``channels`` (the convolutions' width) is independent of ``D``: with ``channels =
    D`` the second convolution alone costs more than a few Conformer layers.

    The input is first normalized with global per-bin statistics (buffers
    ``feat_mean``/``feat_std``, set from training data by :meth:`set_feature_stats`;
    identity by default). Raw log-mel features carry a large constant offset that
    otherwise dominates every frame after the first LayerNorm and stalls training.
    """

    def __init__(self, num_features: int, d_model: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(num_features))
        self.register_buffer("feat_std", torch.ones(num_features))
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq = ((num_features - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * freq, d_model)
        self.dropout = nn.Dropout(dropout)

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the global normalization: ``mean``, ``std`` of shape (F,)."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-3))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, F) with T >= 7 -> (B, T', D)."""
        x = (x - self.feat_mean) / self.feat_std
        h = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = h.shape
        return self.dropout(self.proj(h.transpose(1, 2).reshape(b, t, c * f)))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (half-split layout) on the last dim of (..., T, Dh)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim // 2, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int) -> Tensor:
        """Rotate x: (B, H, T, Dh) whose frames have positions ``offset .. offset + T - 1``."""
        pos = torch.arange(offset, offset + x.size(-2), device=x.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq[None, :]  # (T, Dh/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an optional key/value cache."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        offset: int = 0,
        cache: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        """Attend from the frames of x to the cached frames followed by x.

        Args:
            x: (B, T, D) frames at positions ``offset .. offset + T - 1``.
            mask: bool, broadcastable to (B, H, T, S), True = may attend, with
                ``S = cache length + T``.
            offset: absolute position of ``x[:, 0]``.
            cache: rotated keys and values of earlier frames, each (B, H, S - T, Dh).

        Returns:
            (B, T, D) output and ``(q, k, v)`` of x, each (B, H, T, Dh), q and k rotated.
        """
        b, t, _ = x.shape
        q, k, v = (
            self.in_proj(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        q = self.rotary(q, offset)
        k = self.rotary(k, offset)
        k_all, v_all = (
            (k, v) if cache is None else (torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2))
        )
        out = F.scaled_dot_product_attention(
            q, k_all, v_all, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(out), (q, k, v)


class FeedForward(nn.Module):
    """Pre-norm feed-forward: LayerNorm -> Linear -> SiLU -> Dropout -> Linear -> Dropout."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ffn_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        return self.net(x)


class ConvolutionModule(nn.Module):
    """Pointwise (GLU) -> depthwise conv -> LayerNorm -> SiLU -> pointwise -> Dropout.

    Causal: the depthwise convolution is left-padded with ``kernel - 1`` frames (zeros
    or the streaming cache); otherwise it is padded symmetrically.
    """

    def __init__(self, d_model: int, kernel_size: int, causal: bool, dropout: float) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.causal = causal
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, pad_mask: Optional[Tensor], cache: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Convolve over time.

        Args:
            x: (B, T, D).
            pad_mask: (B, T) bool, True at padding frames (zeroed before the
                depthwise convolution), or None.
            cache: causal only, (B, D, kernel - 1) earlier depthwise inputs (None: zeros).

        Returns:
            (B, T, D) and, when causal, the new cache (B, D, kernel - 1); else None.
        """
        h = F.glu(self.pointwise_in(x), dim=-1)
        if pad_mask is not None:
            h = h.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        h = h.transpose(1, 2)  # (B, D, T)
        new_cache = None
        if self.causal:
            if cache is None:
                cache = h.new_zeros(h.size(0), h.size(1), self.kernel_size - 1)
            h = torch.cat([cache, h], dim=2)
            new_cache = h[:, :, h.size(2) - (self.kernel_size - 1) :]
        else:
            h = F.pad(h, ((self.kernel_size - 1) // 2, (self.kernel_size - 1) // 2))
        h = self.depthwise(h).transpose(1, 2)
        h = self.pointwise_out(self.activation(self.norm(h)))
        return self.dropout(h), new_cache


class ConformerLayer(nn.Module):
    """Pre-norm macaron Conformer block: x + FFN/2, x + MHSA, x + Conv, x + FFN/2."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ff1 = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attn = RotarySelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.norm_conv = nn.LayerNorm(cfg.d_model)
        self.conv = ConvolutionModule(cfg.d_model, cfg.conv_kernel, cfg.causal, cfg.dropout)
        self.ff2 = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor,
        pad_mask: Optional[Tensor],
        offset: int = 0,
        attn_cache: Optional[Tuple[Tensor, Tensor]] = None,
        conv_cache: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor], Optional[Tensor]]:
        """One block.

        Args:
            x: (B, T, D) frames at positions ``offset ..``.
            attn_mask: bool, broadcastable to (B, H, T, S), True = may attend.
            pad_mask: (B, T) bool, True at padding frames, or None.
            offset: absolute position of ``x[:, 0]``.
            attn_cache: earlier rotated keys and values, each (B, H, S - T, Dh).
            conv_cache: (B, D, kernel - 1) causal convolution cache.

        Returns:
            (B, T, D) output, ``(q, k, v)`` of x (each (B, H, T, Dh)), new conv cache.
        """
        x = x + 0.5 * self.ff1(x)
        a, qkv = self.attn(self.norm_attn(x), attn_mask, offset, attn_cache)
        x = x + self.attn_dropout(a)
        c, conv_cache = self.conv(self.norm_conv(x), pad_mask, conv_cache)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return x, qkv, conv_cache


class ConformerEncoder(nn.Module):
    """Conformer encoder: 4x conv subsampling, ``num_layers`` Conformer blocks (the
    ``half_rate_layers`` after the first at half the frame rate), LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.subsampling = Conv2dSubsampling(
            config.num_features, config.d_model, config.subsampling_channels, config.dropout
        )
        self.layers = nn.ModuleList(ConformerLayer(config) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(config.d_model)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Encoder frames for (B,) input lengths: ``max(((T - 1) // 2 - 1) // 2, 0)``."""
        return torch.clamp(((x_lens - 1) // 2 - 1) // 2, min=0)

    def _resolve_context(
        self, chunk_size: Optional[int], left_context: Optional[int]
    ) -> Tuple[int, int]:
        """Chunk size and left context of one forward call (see :meth:`forward`)."""
        cfg = self.config
        if not cfg.causal:
            if chunk_size not in (None, -1):
                raise ValueError(
                    "a non-causal encoder (config.causal=False) only supports full context"
                )
            return -1, -1
        if chunk_size is None and self.training and cfg.dynamic_chunk_training:
            if torch.rand(()).item() < cfg.full_context_prob:
                return -1, -1
            chunk_size = int(torch.randint(1, cfg.max_train_chunk_size + 1, ()).item())
            if left_context is None:
                if cfg.left_context < 0 or torch.rand(()).item() < 0.5:
                    left_context = -1
                else:
                    left_context = int(torch.randint(0, cfg.left_context + 1, ()).item())
        chunk_size = cfg.chunk_size if chunk_size is None else chunk_size
        left_context = cfg.left_context if left_context is None else left_context
        if chunk_size == 0 or chunk_size < -1 or left_context < -1:
            raise ValueError(f"invalid chunk_size={chunk_size} / left_context={left_context}")
        return chunk_size, left_context

    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        chunk_size: Optional[int] = None,
        left_context: Optional[int] = None,
        return_qkv: bool = False,
    ) -> EncoderOutput:
        """Encode a padded batch; a causal model simulates streaming with masks.

        Args:
            x: (B, T, F) fbank features, T >= 7.
            x_lens: (B,) int64 valid frames.
            chunk_size: encoder frames per chunk, -1 = full context. None: sampled per
                batch in training with dynamic chunk training, else
                ``config.chunk_size``. Causal models only (else None or -1).
            left_context: encoder frames of left context, -1 = unlimited. None: sampled
                with the chunk size, else ``config.left_context``.
            return_qkv: also return every layer's (q, k, v).

        Returns:
            :class:`EncoderOutput` with (B, T', D) outputs; padding frames hold
            unspecified values (they never influence valid frames).
        """
        chunk_size, left_context = self._resolve_context(chunk_size, left_context)
        h = self.subsampling(x)
        t = h.size(1)
        out_lens = self.output_lengths(x_lens)
        pad_mask = ~valid_mask(out_lens, t)  # (B, T')
        mask = attention_mask(chunk_attention_mask(t, chunk_size, left_context, x.device), out_lens)
        half = range(1, 1 + self.config.half_rate_layers)  # 0-based layer indexes
        layers: List[Tensor] = []
        qkvs: List[Tuple[Tensor, Tensor, Tensor]] = []
        for i, layer in enumerate(self.layers):
            if i not in half:
                h, qkv, _ = layer(h, mask, pad_mask)
            else:
                if i == half[0]:
                    d_in, lens2 = pair_mean(h, out_lens)
                    t2, d = d_in.size(1), d_in
                    pad2 = ~valid_mask(lens2, t2)
                    mask2 = attention_mask(chunk_attention_mask(t2, -1, -1, x.device), lens2)
                    h_in = h
                d, qkv, _ = layer(d, mask2, pad2)
                # What the half-rate layers added so far, back at the full rate.
                h = h_in + repeat_pairs(d - d_in, t)
                if return_qkv:
                    qkv = tuple(repeat_pairs(z, t, dim=2) for z in qkv)
            layers.append(h)
            qkvs.append(qkv)
        return EncoderOutput(
            out=self.norm_out(h),
            out_lens=out_lens,
            layers=layers,
            qkv=qkvs if return_qkv else None,
        )

    def init_state(
        self, batch_size: int, device: torch.device, left_context: Optional[int] = None
    ) -> EncoderState:
        """Empty streaming state; ``left_context`` defaults to ``config.left_context``."""
        cfg = self.config
        if not cfg.causal:
            raise ValueError("streaming needs a causal encoder (config.causal=True)")
        left_context = cfg.left_context if left_context is None else left_context
        if left_context < -1:
            raise ValueError(f"invalid left_context={left_context}")
        head_dim = cfg.d_model // cfg.num_heads
        empty_kv = torch.zeros(batch_size, cfg.num_heads, 0, head_dim, device=device)
        return EncoderState(
            left_context=left_context,
            offset=0,
            feat_cache=torch.zeros(batch_size, 0, cfg.num_features, device=device),
            num_feats=torch.zeros(batch_size, dtype=torch.int64, device=device),
            attn_cache=[(empty_kv, empty_kv) for _ in self.layers],
            conv_cache=[
                torch.zeros(batch_size, cfg.d_model, cfg.conv_kernel - 1, device=device)
                for _ in self.layers
            ],
            chunk_lens=torch.zeros(batch_size, dtype=torch.int64, device=device),
        )

    def streaming_forward(
        self, x_chunk: Tensor, state: EncoderState, x_lens: Optional[Tensor] = None
    ) -> Tuple[Tensor, EncoderState]:
        """Consume raw frames; emit every encoder frame they complete, as one chunk.

        The emitted frames form one attention chunk. To reproduce the masked forward
        with chunk size ``c``, feed ``4 c + 3`` frames first and ``4 c`` frames after
        that (:func:`streaming_input_slices`); then every call emits ``c`` frames
        (the last one possibly fewer).

        Args:
            x_chunk: (B, T_in, F) new input frames.
            state: from :meth:`init_state` or the previous call (not modified).
            x_lens: (B,) int64 valid frames in ``x_chunk`` (None: all); frames past an
                utterance's end are padding and do not influence its valid outputs.

        Returns:
            (B, n, D) new encoder frames and the new state; ``new_state.chunk_lens``
            (B,) says how many of the n frames are valid per utterance.
        """
        if x_lens is None:
            x_lens = torch.full(
                (x_chunk.size(0),), x_chunk.size(1), dtype=torch.int64, device=x_chunk.device
            )
        feats = torch.cat([state.feat_cache, x_chunk], dim=1)
        num_feats = state.num_feats + x_lens
        n = int(self.output_lengths(torch.tensor(feats.size(1))).item())
        valid_total = self.output_lengths(num_feats)  # (B,) valid encoder frames so far
        chunk_lens = torch.clamp(valid_total - state.offset, min=0, max=n)
        if n == 0:
            out = feats.new_zeros(feats.size(0), 0, self.config.d_model)
            return out, dataclasses.replace(
                state, feat_cache=feats, num_feats=num_feats, chunk_lens=chunk_lens
            )
        h = self.subsampling(feats[:, : SUBSAMPLING_FACTOR * n + SUBSAMPLING_RIGHT_CONTEXT])
        feat_cache = feats[:, SUBSAMPLING_FACTOR * n :]

        b = h.size(0)
        cached = state.attn_cache[0][0].size(2)
        # Key positions offset - cached .. offset + n - 1; valid below each utterance's end.
        key_pos = torch.arange(state.offset - cached, state.offset + n, device=h.device)
        mask = key_pos[None, :] < valid_total[:, None]  # (B, S)
        mask = mask[:, None, :].expand(b, n, cached + n).clone()
        mask[:, :, cached:] |= torch.eye(n, dtype=torch.bool, device=h.device)
        mask = mask.unsqueeze(1)  # (B, 1, n, S)
        pad_mask = ~valid_mask(chunk_lens, n)

        attn_cache: List[Tuple[Tensor, Tensor]] = []
        conv_cache: List[Tensor] = []
        for layer, kv, cc in zip(self.layers, state.attn_cache, state.conv_cache):
            h, (_, k, v), cc = layer(h, mask, pad_mask, state.offset, kv, cc)
            k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
            if state.left_context >= 0:
                keep = min(state.left_context, k.size(2))
                k, v = k[:, :, k.size(2) - keep :], v[:, :, v.size(2) - keep :]
            attn_cache.append((k, v))
            conv_cache.append(cc)
        new_state = EncoderState(
            left_context=state.left_context,
            offset=state.offset + n,
            feat_cache=feat_cache,
            num_feats=num_feats,
            attn_cache=attn_cache,
            conv_cache=conv_cache,
            chunk_lens=chunk_lens,
        )
        return self.norm_out(h), new_state

    def streaming_encode(
        self,
        x: Tensor,
        x_lens: Tensor,
        chunk_size: Optional[int] = None,
        left_context: Optional[int] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Encode whole utterances chunk by chunk with :meth:`streaming_forward`.

        Equals ``forward(x, x_lens, chunk_size, left_context).out`` on valid frames.

        Args:
            x: (B, T, F) padded fbank features.
            x_lens: (B,) int64 valid frames.
            chunk_size: encoder frames per chunk (None: ``config.chunk_size``; > 0).
            left_context: None: ``config.left_context``; -1: unlimited.

        Returns:
            (B, T', D) encoder output and (B,) int64 valid lengths.
        """
        chunk_size = self.config.chunk_size if chunk_size is None else chunk_size
        state = self.init_state(x.size(0), x.device, left_context)
        outs = []
        for start, end in streaming_input_slices(x.size(1), chunk_size):
            out, state = self.streaming_forward(
                x[:, start:end], state, torch.clamp(x_lens - start, min=0, max=end - start)
            )
            outs.append(out)
        return torch.cat(outs, dim=1), self.output_lengths(x_lens)


def streaming_input_slices(num_frames: int, chunk_size: int) -> List[Tuple[int, int]]:
    """Input frame ranges ``[start, end)`` that make streaming emit ``chunk_size``-frame chunks.

    The first range holds ``4 chunk_size + 3`` frames, the next ones ``4 chunk_size``,
    the last one whatever remains.
    """
    if chunk_size <= 0:
        raise ValueError(f"streaming needs a positive chunk_size, got {chunk_size}")
    step = SUBSAMPLING_FACTOR * chunk_size
    slices = []
    start, end = 0, step + SUBSAMPLING_RIGHT_CONTEXT
    while start < num_frames:
        slices.append((start, min(end, num_frames)))
        start, end = end, end + step
    return slices


__all__ = [
    "EncoderConfig",
    "EncoderOutput",
    "EncoderState",
    "ConformerEncoder",
    "attention_mask",
    "chunk_attention_mask",
    "valid_mask",
    "pair_mean",
    "repeat_pairs",
    "streaming_input_slices",
]
