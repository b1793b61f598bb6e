"""mvq_kd: knowledge distillation for Conformer transducers.

Three distillation families share one training loop:

* MVQ-KD: predict multi-codebook quantized teacher embeddings (:mod:`mvq_kd.quantization`).
* Layer-wise KD from a non-streaming teacher to a streaming student through
  auxiliary non-streaming layers.
* Sequence-level KD on the teacher's N-best pseudo labels.

The transducer itself (:mod:`mvq_kd.model`) uses a pure-PyTorch pruned RNN-T loss
(:mod:`mvq_kd.rnnt`) with k2's API, so k2 is optional.
"""

__version__ = "0.1.0"
