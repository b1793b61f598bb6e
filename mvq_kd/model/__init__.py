"""Conformer transducer: encoder (streaming or not), stateless decoder, joiner."""

from mvq_kd.model.decoder import Decoder
from mvq_kd.model.encoder import (
    ConformerEncoder,
    EncoderConfig,
    EncoderOutput,
    EncoderState,
    chunk_attention_mask,
    streaming_input_slices,
)
from mvq_kd.model.joiner import Joiner
from mvq_kd.model.transducer import (
    Transducer,
    TransducerConfig,
    TransducerOutput,
)

__all__ = [
    "ConformerEncoder",
    "Decoder",
    "EncoderConfig",
    "EncoderOutput",
    "EncoderState",
    "Joiner",
    "Transducer",
    "TransducerConfig",
    "TransducerOutput",
    "chunk_attention_mask",
    "streaming_input_slices",
]
