"""Export a trained transducer to ONNX: encoder, decoder and joiner, as icefall does.

Three graphs, with the joiner's input projections moved into the encoder and decoder
graphs (so the joiner runs once per frame and hypothesis on small vectors):

* ``encoder.onnx``: non-streaming models take ``x`` (N, T, 80) fbank and ``x_lens`` (N,)
  and return ``encoder_out`` (N, T', J) and ``encoder_out_lens`` (N,), any T. Streaming
  models take one chunk of ``4 c + 3`` frames (c = ``chunk_size`` encoder frames; the
  3 last frames are the first 3 of the next chunk) with their caches as explicit inputs
  and outputs (:class:`OnnxStreamingEncoder`) and return ``c`` frames.
* ``decoder.onnx``: ``y`` (N, context_size) int64 -> ``decoder_out`` (N, J).
* ``joiner.onnx``: ``encoder_out`` (N, J), ``decoder_out`` (N, J) -> ``logit`` (N, V).

The global feature normalisation is part of the encoder graph. The settings a runtime
needs are stored as metadata of ``encoder.onnx`` (:func:`model_metadata`) and in
``config.json``; ``tokens.txt`` maps ids to BPE pieces. ``int8=True`` adds
``*.int8.onnx`` with dynamic int8 quantization of the weights (onnxruntime).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq_kd.model.encoder import SUBSAMPLING_FACTOR, SUBSAMPLING_RIGHT_CONTEXT, ConformerEncoder
from mvq_kd.model.transducer import Transducer
from mvq_kd.utils import Pathlike, atomic_path, write_lines

OPSET = 18


class OnnxEncoder(nn.Module):
    """Whole-utterance encoder with the joiner's encoder projection."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.encoder, self.proj = model.encoder, model.joiner.encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,) -> (N, T', J), (N,)."""
        out = self.encoder(x, x_lens)
        return self.proj(out.out), out.out_lens


class OnnxStreamingEncoder(nn.Module):
    """One chunk of a causal encoder, the caches as inputs and outputs.

    Equals :meth:`ConformerEncoder.streaming_forward` with a finite left context ``L``.
    Its caches have fixed shapes: the keys and values of the last ``L`` encoder frames
    per layer, stored *unrotated*: every call rotates them with positions ``0 .. L +
    c - 1`` and the chunk's queries with ``L .. L + c - 1``, which gives the same
    attention scores as absolute positions (rotary scores depend only on the distance)
    and keeps the graph free of a position counter.

    Inputs:
        x: (N, 4 c + 3, F) fbank frames.
        cached_key, cached_value: (num_layers, N, H, L, Dh).
        cached_conv: (num_layers, N, D, kernel - 1).
        processed: (N,) int64 encoder frames emitted by earlier calls (masks the cache
            slots not filled yet).
        valid: (N,) int64 valid frames of this chunk (``c``, fewer in the last one).
    Outputs:
        encoder_out (N, c, J) and the new caches, ``processed + valid``.
    """

    def __init__(self, model: Transducer, chunk_size: int, left_context: int) -> None:
        super().__init__()
        if chunk_size < 1 or left_context < 0:
            raise ValueError(
                f"a streaming export needs chunk_size >= 1 and left_context >= 0, got "
                f"{chunk_size} / {left_context}"
            )
        self.encoder: ConformerEncoder = model.encoder
        self.proj = model.joiner.encoder_proj
        self.chunk_size, self.left_context = chunk_size, left_context

    def forward(
        self,
        x: Tensor,
        cached_key: Tensor,
        cached_value: Tensor,
        cached_conv: Tensor,
        processed: Tensor,
        valid: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cfg = self.encoder.config
        c, lc = self.chunk_size, self.left_context
        h = self.encoder.subsampling(x)  # (N, c, D)
        n = h.size(0)
        heads, dh = cfg.num_heads, cfg.d_model // cfg.num_heads
        slots = torch.arange(lc, device=x.device)
        frames = torch.arange(c, device=x.device)
        key_valid = torch.cat(
            [slots[None] >= (lc - processed)[:, None], frames[None] < valid[:, None]], dim=1
        )  # (N, L + c)
        itself = torch.arange(lc + c, device=x.device)[None] == (lc + frames)[:, None]  # (c, L+c)
        mask = (key_valid[:, None, :] | itself[None]).unsqueeze(1)  # (N, 1, c, L + c)
        pad_mask = frames[None] >= valid[:, None]  # (N, c)
        keys, values, convs = [], [], []
        for i, layer in enumerate(self.encoder.layers):
            h = h + 0.5 * layer.ff1(h)
            attn = layer.attn
            q, k, v = (
                attn.in_proj(layer.norm_attn(h)).view(n, c, 3, heads, dh).permute(2, 0, 3, 1, 4)
            )
            k_all = torch.cat([cached_key[i], k], dim=2)
            v_all = torch.cat([cached_value[i], v], dim=2)
            a = F.scaled_dot_product_attention(
                attn.rotary(q, lc), attn.rotary(k_all, 0), v_all, attn_mask=mask
            )
            h = h + attn.out_proj(a.transpose(1, 2).reshape(n, c, cfg.d_model))
            conv_out, conv_cache = layer.conv(layer.norm_conv(h), pad_mask, cached_conv[i])
            h = h + conv_out
            h = h + 0.5 * layer.ff2(h)
            keys.append(k_all[:, :, c:])
            values.append(v_all[:, :, c:])
            convs.append(conv_cache)
        out = self.proj(self.encoder.norm_out(h))
        return out, torch.stack(keys), torch.stack(values), torch.stack(convs), processed + valid

    def initial_state(self, batch_size: int = 1) -> Dict[str, Tensor]:
        """Zero caches for ``batch_size`` new streams."""
        cfg = self.encoder.config
        heads, dh = cfg.num_heads, cfg.d_model // cfg.num_heads
        kv = (cfg.num_layers, batch_size, heads, self.left_context, dh)
        return {
            "cached_key": torch.zeros(kv),
            "cached_value": torch.zeros(kv),
            "cached_conv": torch.zeros(
                cfg.num_layers, batch_size, cfg.d_model, cfg.conv_kernel - 1
            ),
            "processed": torch.zeros(batch_size, dtype=torch.int64),
        }


class OnnxDecoder(nn.Module):
    """Stateless decoder on exactly ``context_size`` tokens, with its projection."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.decoder, self.proj = model.decoder, model.joiner.decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        """y: (N, context_size) int64 -> (N, J)."""
        return self.proj(self.decoder(y, need_pad=False)).squeeze(1)


class OnnxJoiner(nn.Module):
    """Joiner on projected inputs."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.joiner = model.joiner

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        """(N, J), (N, J) -> (N, V) logits."""
        return self.joiner(encoder_out, decoder_out, project_input=False)


def model_metadata(model: Transducer, chunk_size: int, left_context: int) -> Dict[str, str]:
    """What a runtime needs to feed and decode the exported graphs (string values)."""
    cfg = model.encoder.config
    streaming = cfg.causal
    meta = {
        "model_type": "conformer_transducer",
        "streaming": int(streaming),
        "sample_rate": 16000,
        "feature": "lhotse Fbank (kaldi-compatible log-mel), 25 ms window, 10 ms shift",
        "num_mel_bins": cfg.num_features,
        "feature_normalisation": "global mean/std, inside encoder.onnx",
        "subsampling_factor": SUBSAMPLING_FACTOR,
        "vocab_size": model.joiner.output_linear.out_features,
        "blank_id": model.blank_id,
        "context_size": model.decoder.context_size,
        "joiner_dim": model.joiner.output_linear.in_features,
        "num_encoder_layers": cfg.num_layers,
        "encoder_dim": cfg.d_model,
        "num_heads": cfg.num_heads,
        "conv_kernel": cfg.conv_kernel,
    }
    if streaming:
        meta.update(
            chunk_size=chunk_size,
            left_context=left_context,
            chunk_frames=SUBSAMPLING_FACTOR * chunk_size + SUBSAMPLING_RIGHT_CONTEXT,
            chunk_shift=SUBSAMPLING_FACTOR * chunk_size,
        )
    return {k: str(v) for k, v in meta.items()}


def _export(module: nn.Module, args: Tuple, path: Path, names, dynamic_shapes) -> None:
    """torch.onnx (dynamo) export of ``module`` into ``path``, atomically."""
    inputs, outputs = names
    with atomic_path(path) as tmp:
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _add_metadata(path: Path, meta: Dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of the weights (MatMul / Gemm) with onnxruntime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    _add_metadata(dst, _read_metadata(src))


def _read_metadata(path: Path) -> Dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def export_onnx(
    model: Transducer,
    out_dir: Pathlike,
    tokens: Dict[int, str],
    chunk_size: int = -1,
    left_context: int = -1,
    int8: bool = False,
) -> Dict[str, Path]:
    """Write ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` (and ``*.int8.onnx``),
    ``tokens.txt`` and ``config.json`` into ``out_dir``.

    Args:
        model: the transducer; put in eval mode here.
        out_dir: output folder (created).
        tokens: id -> BPE piece (``tokens.txt``).
        chunk_size, left_context: a streaming model's chunk and left context in encoder
            frames (-1: the model's defaults; the left context must be finite).
        int8: also write the int8 versions.
    Returns:
        name -> path of every file written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.encoder.config
    chunk_size = cfg.chunk_size if chunk_size == -1 else chunk_size
    left_context = cfg.left_context if left_context == -1 else left_context
    files: Dict[str, Path] = {}
    ctx = model.decoder.context_size
    jdim = model.joiner.output_linear.in_features
    n = torch.export.Dim("N", min=1, max=256)
    with torch.no_grad():
        if cfg.causal:
            if left_context < 0:
                raise ValueError(
                    "a streaming export needs a finite left context: the model's is "
                    "unlimited (-1); pass --left-context N (encoder frames)"
                )
            enc = OnnxStreamingEncoder(model, chunk_size, left_context).eval()
            state = enc.initial_state(1)
            x = torch.randn(1, SUBSAMPLING_FACTOR * chunk_size + SUBSAMPLING_RIGHT_CONTEXT, 80)
            args = (x, state["cached_key"], state["cached_value"], state["cached_conv"],
                    state["processed"], torch.tensor([chunk_size]))  # fmt: skip
            names = (
                ["x", "cached_key", "cached_value", "cached_conv", "processed", "valid"],
                ["encoder_out", "new_cached_key", "new_cached_value", "new_cached_conv",
                 "new_processed"],
            )  # fmt: skip
            dyn = {"x": {0: n}, "cached_key": {1: n}, "cached_value": {1: n},
                   "cached_conv": {1: n}, "processed": {0: n}, "valid": {0: n}}  # fmt: skip
        else:
            enc = OnnxEncoder(model).eval()
            t = torch.export.Dim("T", min=16, max=100_000)
            args = (torch.randn(2, 200, cfg.num_features), torch.tensor([200, 150]))
            names = (["x", "x_lens"], ["encoder_out", "encoder_out_lens"])
            dyn = {"x": {0: n, 1: t}, "x_lens": {0: n}}
        logging.info(f"Exporting the encoder (streaming: {cfg.causal}) to {out_dir}")
        _export(enc, args, out_dir / "encoder.onnx", names, dyn)
        y = torch.full((2, ctx), model.blank_id, dtype=torch.int64)
        _export(OnnxDecoder(model).eval(), (y,), out_dir / "decoder.onnx",
                (["y"], ["decoder_out"]), {"y": {0: n}})  # fmt: skip
        e, d = torch.randn(2, jdim), torch.randn(2, jdim)
        _export(OnnxJoiner(model).eval(), (e, d), out_dir / "joiner.onnx",
                (["encoder_out", "decoder_out"], ["logit"]),
                {"encoder_out": {0: n}, "decoder_out": {0: n}})  # fmt: skip
    meta = model_metadata(model, chunk_size, left_context)
    for name in ("encoder", "decoder", "joiner"):
        path = out_dir / f"{name}.onnx"
        _add_metadata(path, meta)
        files[name] = path
        if int8:
            files[f"{name}.int8"] = out_dir / f"{name}.int8.onnx"
            quantize_int8(path, files[f"{name}.int8"])
    write_lines(out_dir / "tokens.txt", (f"{piece} {i}" for i, piece in sorted(tokens.items())))
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    files["tokens"], files["config"] = out_dir / "tokens.txt", out_dir / "config.json"
    return files
