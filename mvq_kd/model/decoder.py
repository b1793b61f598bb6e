"""Stateless transducer decoder (prediction network) with a fixed left context."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Decoder(nn.Module):
    """Embedding of the last ``context_size`` tokens mixed by a depthwise Conv1d, then ReLU.

    The blank embedding is the padding row (all zeros, never trained), so a context
    of blanks equals the zero left-padding used in training.
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim, padding_idx=blank_id)
        self.conv = (
            nn.Conv1d(decoder_dim, decoder_dim, context_size, groups=decoder_dim, bias=False)
            if context_size > 1
            else None
        )

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """Decoder output for every position of y.

        Args:
            y: (B, U) int64 token ids.
            need_pad: True (training): left-pad with ``context_size - 1`` blank
                (zero) frames, output (B, U, C). False (decoding): y holds exactly
                ``context_size`` tokens per row, output (B, 1, C).

        Returns:
            (B, U, decoder_dim) or (B, 1, decoder_dim).
        """
        emb = self.embedding(y)
        if self.conv is not None:
            emb = emb.transpose(1, 2)  # (B, C, U)
            if need_pad:
                emb = F.pad(emb, (self.context_size - 1, 0))
            elif emb.size(-1) != self.context_size:
                raise ValueError(
                    f"need_pad=False expects {self.context_size} tokens, got {emb.size(-1)}"
                )
            emb = self.conv(emb).transpose(1, 2)
        return F.relu(emb)
