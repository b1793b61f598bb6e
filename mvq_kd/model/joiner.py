"""Transducer joiner: project encoder and decoder outputs, add, tanh, output layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Joiner(nn.Module):
    """``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))``."""

    def __init__(
        self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int
    ) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, enc: Tensor, dec: Tensor, project_input: bool = True) -> Tensor:
        """Joint logits.

        Args:
            enc: (..., encoder_dim), or (..., joiner_dim) already projected.
            dec: (..., decoder_dim), or (..., joiner_dim) already projected; broadcast
                against ``enc`` (e.g. (B, T, s, J) pruned or (N, J) per frame).
            project_input: False when both inputs are already projected (pruned loss,
                decoding).

        Returns:
            (..., vocab_size) logits.
        """
        if project_input:
            enc, dec = self.encoder_proj(enc), self.decoder_proj(dec)
        return self.output_linear(torch.tanh(enc + dec))
