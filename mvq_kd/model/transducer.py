"""Conformer transducer trained with the pruned RNN-T loss (:mod:`mvq_kd.rnnt`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from mvq_kd.cli import option
from mvq_kd.model.decoder import Decoder
from mvq_kd.model.encoder import ConformerEncoder, EncoderConfig, EncoderOutput
from mvq_kd.model.joiner import Joiner
from mvq_kd.rnnt import do_rnnt_pruning, get_rnnt_prune_ranges, rnnt_loss_pruned, rnnt_loss_smoothed


@dataclass
class TransducerConfig:
    """Transducer hyper-parameters; ``vocab_size`` includes the blank."""

    encoder: EncoderConfig
    vocab_size: int
    blank_id: int = 0
    decoder_dim: int = option(512, "prediction network (decoder) width")
    joiner_dim: int = option(512, "joiner width")
    context_size: int = option(2, "decoder context: previous tokens it sees")
    ctc_head: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.blank_id < self.vocab_size:
            raise ValueError(f"blank_id={self.blank_id} outside vocab_size={self.vocab_size}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (for checkpoints / JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TransducerConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        d = dict(d)
        return cls(encoder=EncoderConfig(**d.pop("encoder")), **d)


@dataclass
class TransducerOutput:
    """Losses (summed over the batch) and the encoder output they were computed from."""

    simple_loss: Tensor
    pruned_loss: Tensor
    encoder: EncoderOutput
    ctc_loss: Optional[Tensor] = None


class Transducer(nn.Module):
    """Conformer encoder + stateless decoder + joiner, with the simple (linear) joiner
    projections ``simple_am_proj`` / ``simple_lm_proj`` used by the pruned loss."""

    def __init__(self, config: TransducerConfig) -> None:
        super().__init__()
        self.config = config
        enc_dim = config.encoder.d_model
        self.encoder = ConformerEncoder(config.encoder)
        self.decoder = Decoder(
            config.vocab_size, config.decoder_dim, config.blank_id, config.context_size
        )
        self.joiner = Joiner(enc_dim, config.decoder_dim, config.joiner_dim, config.vocab_size)
        self.simple_am_proj = nn.Linear(enc_dim, config.vocab_size)
        self.simple_lm_proj = nn.Linear(config.decoder_dim, config.vocab_size)
        # Auxiliary CTC head on the encoder output (training only; speeds up learning
        # the alignment on small data). Created only when used: DDP needs every
        # parameter to get a gradient.
        self.ctc_output = nn.Linear(enc_dim, config.vocab_size) if config.ctc_head else None

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Transducer":
        """Freshly initialised model from a config dict (see :meth:`TransducerConfig.to_dict`)."""
        return cls(TransducerConfig.from_dict(d))

    @property
    def blank_id(self) -> int:
        """Id of the blank symbol."""
        return self.config.blank_id

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        y_padded: Tensor,
        y_lens: Tensor,
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.25,
        chunk_size: Optional[int] = None,
        left_context: Optional[int] = None,
        return_qkv: bool = False,
        weights: Optional[Tensor] = None,
        rows: Optional[Tensor] = None,
    ) -> TransducerOutput:
        """Simple and pruned RNN-T losses, each summed over the batch.

        Args:
            x: (B, T, F) fbank features.
            x_lens: (B,) int64 valid frames; every utterance needs at least one
                encoder frame (``ConformerEncoder.output_lengths(x_lens) >= 1``).
            y_padded: (R, S) int64 token ids (no blanks); values past ``y_lens`` are
                ignored. ``R = B`` (one target per utterance) unless ``rows`` is given.
            y_lens: (R,) int64 token counts.
            prune_range: symbols kept per frame for the pruned loss.
            am_scale / lm_scale: weights of the acoustic-only / LM-only terms of the
                smoothed simple loss.
            chunk_size / left_context / return_qkv: see ``ConformerEncoder.forward``.
            weights: (R,) per-target loss weights (0 for an unlabeled cut: its
                encoder output still serves distillation); None: all 1.
            rows: (R,) int64, the utterance of each target: several targets per utterance
                (e.g. a teacher's N-best) share one encoder forward; None: ``arange(B)``.

        Returns:
            :class:`TransducerOutput`.
        """
        blank = self.config.blank_id
        reduction = "sum" if weights is None else "none"

        def reduce(loss: Tensor) -> Tensor:
            return loss if weights is None else (loss * weights).sum()

        enc = self.encoder(x, x_lens, chunk_size, left_context, return_qkv)
        enc_out, enc_lens = enc.out, enc.out_lens
        if rows is not None:
            enc_out, enc_lens = enc_out[rows], enc_lens[rows]
        s = y_padded.size(1)
        y = y_padded.masked_fill(
            torch.arange(s, device=y_padded.device)[None, :] >= y_lens[:, None], blank
        )
        sos_y = torch.cat([torch.full_like(y[:, :1], blank), y], dim=1)  # (B, S + 1)
        dec = self.decoder(sos_y)  # (B, S + 1, decoder_dim)
        boundary = torch.zeros(y.size(0), 4, dtype=torch.int64, device=y.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = enc_lens

        lm = self.simple_lm_proj(dec)
        am = self.simple_am_proj(enc_out)
        with torch.autocast(device_type=x.device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
                lm=lm.float(),
                am=am.float(),
                symbols=y,
                termination_symbol=blank,
                lm_only_scale=lm_scale,
                am_only_scale=am_scale,
                boundary=boundary,
                reduction=reduction,
                return_grad=True,
            )
            simple_loss = reduce(simple_loss)
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, prune_range)
        am_pruned, lm_pruned = do_rnnt_pruning(
            self.joiner.encoder_proj(enc_out), self.joiner.decoder_proj(dec), ranges
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)  # (B, T', prune_range, V)
        with torch.autocast(device_type=x.device.type, enabled=False):
            pruned_loss = rnnt_loss_pruned(
                logits=logits.float(),
                symbols=y,
                ranges=ranges,
                termination_symbol=blank,
                boundary=boundary,
                reduction=reduction,
            )
            pruned_loss = reduce(pruned_loss)
        ctc_loss = None
        if self.ctc_output is not None:
            log_probs = self.ctc_output(enc_out).float().log_softmax(-1)  # (R, T', V)
            ctc_loss = nn.functional.ctc_loss(
                log_probs.transpose(0, 1),
                y,
                enc_lens,
                y_lens,
                blank=blank,
                reduction=reduction,
                zero_infinity=True,
            )
            ctc_loss = reduce(ctc_loss)
        return TransducerOutput(
            simple_loss=simple_loss, pruned_loss=pruned_loss, encoder=enc, ctc_loss=ctc_loss
        )
