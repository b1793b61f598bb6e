"""mvq_kd: knowledge distillation for Conformer transducers.

Three distillation families share one training loop:

* MVQ-KD: predict multi-codebook quantized teacher embeddings (:mod:`mvq_kd.quantization`).
* Layer-wise KD from a non-streaming teacher to a streaming student through
  auxiliary non-streaming layers.
* Sequence-level KD on the teacher's N-best pseudo labels.

The transducer itself (:mod:`mvq_kd.model`) uses a pure-PyTorch pruned RNN-T loss
(:mod:`mvq_kd.rnnt`) with k2's API, so k2 is optional.

Modules, one job each; imports point down this list (``tests/test_imports.py``):

* pipelines: ``trainer`` (the training loop), ``evaluate`` (decoding, result files),
  ``codebooks`` and ``nbest`` (distillation targets of ``prepare.sh``), ``experiments``
  and ``results`` (the recipe's experiment matrix and its results table);
* building blocks: ``config`` (a run's options), ``loss``, ``kd/`` (distillation
  losses and their builders), ``model/``, ``teacher``, ``dataset`` (batches),
  ``checkpoint`` (file format, save, resume, averaging, loading), ``decoding``,
  ``shards``, ``quantization``, ``data/`` (corpus preparation);
* primitives: ``fields`` (what cut manifests carry), ``cli`` (options declared once in
  the configs), ``device``, ``rnnt``, ``utils``.
"""

__version__ = "0.1.0"
