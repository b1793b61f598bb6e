"""Teacher models that turn a batch of audio into embeddings of one layer.

One interface for every backend: :meth:`Teacher.embed` takes the batch the backend
needs (raw waveforms for self-supervised models, fbank for the project's own
Conformers) and returns :class:`TeacherOutput` ``(B, T, D)`` embeddings of layer
``layer`` (1-based, like the MVQ-KD paper's "HuBERT-XL layer 36"), their valid
lengths and the frame shift in seconds.

Backends:

* :class:`HfSslTeacher`: HuBERT, wav2vec 2.0 and WavLM through ``transformers`` (a
  local directory or a hub name), or a fairseq HuBERT checkpoint (``.pt``) whose
  weights are mapped into the ``transformers`` model (:func:`load_fairseq_hubert`;
  fairseq is not needed). Batches are exact: each utterance is normalised over its
  own samples, the convolutional front end of group-norm models runs per utterance
  (GroupNorm statistics span the whole time axis, so padding would change them), and
  the Transformer gets the exact frame-level padding mask. Batched embeddings equal
  one-by-one embeddings.
* :class:`ConformerTeacher`: a checkpoint of this project (e.g. the non-streaming
  teacher of ``egs/synth``), from fbank features.
"""

from __future__ import annotations

import ast
import logging
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mvq_kd.checkpoint import load_model
from mvq_kd.cli import option
from mvq_kd.fields import SAMPLE_RATE
from mvq_kd.model.encoder import ENCODER_FRAME_SHIFT, valid_mask


@dataclass
class TeacherOutput:
    """Embeddings of one teacher layer.

    Attributes:
        embeddings: (B, T, D) float; frames past ``lens`` are padding (zeros).
        lens: (B,) int64 valid frames.
        frame_shift: seconds between frames (0.02 for HuBERT, 0.04 for our Conformers).
    """

    embeddings: Tensor
    lens: Tensor
    frame_shift: float


@dataclass
class TeacherLayers:
    """What a Conformer teacher gives each connection of layer-wise KD.

    Attributes:
        outputs: per teacher layer (1-based key) its output, (B, T, D).
        qkv: per teacher layer its ``(q, k, v)``, each (B, H, T, D / H).
        lens: (B,) valid frames.
    """

    outputs: Dict[int, Tensor]
    qkv: Dict[int, Tuple[Tensor, Tensor, Tensor]]
    lens: Tensor


class Teacher(nn.Module):
    """Common interface. ``input_type`` is ``"audio"`` (16 kHz waveforms (B, S)) or
    ``"fbank"`` ((B, T, 80) features); ``dim`` is the embedding dimension."""

    input_type: str = "audio"
    frame_shift: float = 0.02
    dim: int = 0

    def embed(self, x: Tensor, x_lens: Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def _zero_padding(h: Tensor, lens: Tensor) -> Tensor:
    return h * valid_mask(lens, h.size(1))[..., None].to(h.dtype)


class HfSslTeacher(Teacher):
    """HuBERT / wav2vec 2.0 / WavLM from ``transformers``, embeddings of ``layer``.

    Args:
        model: a ``HubertModel``, ``Wav2Vec2Model`` or ``WavLMModel``.
        layer: 1-based Transformer layer (``0``: the input of the first layer).
        normalize: zero-mean unit-variance normalisation of each utterance (HuBERT
            large/XL and wav2vec 2.0 large were trained with it; HuBERT base without).
    """

    input_type = "audio"

    def __init__(self, model: nn.Module, layer: int, normalize: bool) -> None:
        super().__init__()
        num_layers = len(model.encoder.layers)
        if not 0 <= layer <= num_layers:
            raise ValueError(f"layer must be in 0..{num_layers} (1-based), got {layer}")
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.dim = model.config.hidden_size
        stride = 1
        for s in model.config.conv_stride:
            stride *= s
        self.frame_shift = stride / SAMPLE_RATE
        self.per_utterance_frontend = model.config.feat_extract_norm == "group"
        # Layers above ``layer`` are never needed: drop them (HuBERT-XL layer 36 of 48
        # saves a quarter of the compute and memory).
        # The encoder's last hidden state is then the output of ``layer``, except that
        # pre-norm ("stable layer norm") encoders normalise after their last layer: an
        # inner layer's hidden state is taken before that normalisation.
        del self.model.encoder.layers[layer:]
        if model.config.do_stable_layer_norm and layer < num_layers:
            self.model.encoder.layer_norm = nn.Identity()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, layer: int, normalize: Optional[bool] = None
    ) -> "HfSslTeacher":
        """A local directory or hub name (``transformers``), or a fairseq ``.pt`` file.

        ``normalize=None`` takes the model's own setting: ``do_normalize`` of its
        feature-extractor config, or fairseq's task ``normalize``.
        """
        if str(name_or_path).endswith(".pt"):
            model, fairseq_normalize = load_fairseq_hubert(name_or_path)
            return cls(model, layer, fairseq_normalize if normalize is None else normalize)
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in ("hubert", "wav2vec2", "wavlm"):
            raise ValueError(
                f"{name_or_path} is a {config.model_type!r} model; supported teachers are "
                "hubert, wav2vec2 and wavlm"
            )
        model = AutoModel.from_pretrained(name_or_path, attn_implementation="eager")
        if normalize is None:
            try:
                from transformers import AutoFeatureExtractor

                normalize = bool(AutoFeatureExtractor.from_pretrained(name_or_path).do_normalize)
            except (OSError, ValueError, AttributeError):
                normalize = bool(getattr(config, "feat_extract_norm", "group") == "layer")
                logging.warning(
                    f"{name_or_path} has no feature-extractor config; normalize={normalize} "
                    "guessed from its architecture (set it explicitly to be sure)"
                )
        return cls(model, layer, normalize)

    @torch.no_grad()
    def embed(self, x: Tensor, x_lens: Tensor) -> TeacherOutput:
        """x: (B, S) 16 kHz waveforms padded at the end, x_lens: (B,) valid samples."""
        model = self.model
        x = x.float()
        if self.normalize:
            x = torch.stack([_normalize(w, int(n)) for w, n in zip(x, x_lens)])
        lens = model._get_feat_extract_output_lengths(x_lens).long()
        if self.per_utterance_frontend:
            feats = [model.feature_extractor(w[None, : int(n)]) for w, n in zip(x, x_lens)]
            t = max(f.size(2) for f in feats)
            feats = torch.cat([nn.functional.pad(f, (0, t - f.size(2))) for f in feats])
        else:
            feats = model.feature_extractor(x)
        feats = feats.transpose(1, 2)  # (B, T, C)
        hidden = model.feature_projection(feats)
        if isinstance(hidden, tuple):  # wav2vec 2.0 / WavLM return (hidden, normed feats)
            hidden = hidden[0]
        mask = valid_mask(lens, hidden.size(1))
        emb = model.encoder(hidden, attention_mask=mask).last_hidden_state
        return TeacherOutput(_zero_padding(emb, lens), lens, self.frame_shift)


def _normalize(w: Tensor, n: int) -> Tensor:
    """Zero mean, unit variance over the first n samples (as the feature extractor)."""
    valid = w[:n]
    out = torch.zeros_like(w)
    out[:n] = (valid - valid.mean()) / torch.sqrt(valid.var(unbiased=False) + 1e-7)
    return out


# ---------------------------------------------------------------------- fairseq


class _Stub:
    """Stands for any fairseq class pickled into a checkpoint (fairseq not installed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _FairseqFreeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("fairseq"):
            return _Stub
        return super().find_class(module, name)


_fairseq_pickle = types.ModuleType("fairseq_free_pickle")
_fairseq_pickle.Unpickler = _FairseqFreeUnpickler  # type: ignore[attr-defined]
_fairseq_pickle.load = pickle.load  # type: ignore[attr-defined]


def _as_dict(cfg: Any) -> Dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return cfg
    if hasattr(cfg, "items"):  # omegaconf DictConfig
        try:
            from omegaconf import OmegaConf

            return OmegaConf.to_container(cfg, resolve=True)
        except ImportError:
            return dict(cfg.items())
    return vars(cfg)  # argparse.Namespace of old checkpoints


def _fairseq_configs(ckpt: Dict[str, Any], path: Path) -> Tuple[Dict, Dict]:
    """(model config, task config) of a fairseq checkpoint; fine-tuned models give the
    pre-training model config of their ``w2v_args``."""
    if ckpt.get("cfg") is not None:
        cfg = _as_dict(ckpt["cfg"])
        model, task = _as_dict(cfg.get("model")), _as_dict(cfg.get("task"))
    elif ckpt.get("args") is not None:
        model = task = _as_dict(ckpt["args"])
    else:
        raise ValueError(f"{path}: no 'cfg' or 'args' entry; not a fairseq checkpoint")
    w2v = model.get("w2v_args")
    if w2v:
        w2v = _as_dict(w2v)
        model = _as_dict(w2v.get("model", w2v))
        task = _as_dict(w2v.get("task", task))
    return model, task


def load_fairseq_hubert(path: Union[str, Path]) -> Tuple[nn.Module, bool]:
    """A fairseq HuBERT checkpoint (pre-trained or CTC fine-tuned) as a ``transformers``
    ``HubertModel``, without fairseq. Returns ``(model, normalize)``.

    Raises ``ValueError`` naming the checkpoint for anything else (wav2vec 2.0 or data2vec
    checkpoints, unknown extractor modes, missing or unexpected weights).
    """
    from transformers import HubertConfig, HubertModel

    path = Path(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_fairseq_pickle)
    model_cfg, task_cfg = _fairseq_configs(ckpt, path)
    name = model_cfg.get("_name") or model_cfg.get("arch") or ""
    if name and "hubert" not in str(name):
        raise ValueError(f"{path}: unsupported fairseq model {name!r} (HuBERT only)")
    state = ckpt["model"]
    prefix = "w2v_encoder.w2v_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    mode = model_cfg.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"{path}: unsupported extractor_mode {mode!r}")
    conv_layers = _parse_conv_layers(
        model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    )
    dim = int(model_cfg.get("encoder_embed_dim", 768))
    config = HubertConfig(
        hidden_size=dim,
        num_hidden_layers=int(model_cfg.get("encoder_layers", 12)),
        num_attention_heads=int(model_cfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(model_cfg.get("encoder_ffn_embed_dim", 3072)),
        hidden_act=str(model_cfg.get("activation_fn", "gelu")),
        conv_dim=[c[0] for c in conv_layers],
        conv_kernel=[c[1] for c in conv_layers],
        conv_stride=[c[2] for c in conv_layers],
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        feat_extract_norm="group" if mode == "default" else "layer",
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        num_conv_pos_embeddings=int(model_cfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(model_cfg.get("conv_pos_groups", 16)),
        feat_proj_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
    )
    model = HubertModel(config)
    mapped = {}
    ignored = ("label_embs_concat", "final_proj.", "w2v_encoder.proj.", "label_embs")
    for key, value in state.items():
        if key.startswith(ignored):
            continue
        new = _map_fairseq_key(key)
        if new is None:
            raise ValueError(f"{path}: unexpected weight {key!r} for a fairseq HuBERT model")
        mapped[new] = value
    target = model.state_dict()
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(f"{path}: weights missing for {missing[:5]} ({len(missing)} in all)")
    for k, v in mapped.items():
        if k not in target or target[k].shape != v.shape:
            raise ValueError(
                f"{path}: weight {k} has shape {tuple(v.shape)}, the model expects "
                f"{tuple(target[k].shape) if k in target else 'no such weight'}"
            )
    model.load_state_dict(mapped)
    return model.eval(), bool(task_cfg.get("normalize", False))


def _parse_conv_layers(spec: str):
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``,
    as a list of (dim, kernel, stride), without ``eval``."""
    layers = []
    for inner, times in re.findall(r"\[([^\]]*)\]\s*(?:\*\s*(\d+))?", spec):
        layers += list(ast.literal_eval(f"[{inner}]")) * int(times or 1)
    if not layers:
        raise ValueError(f"cannot parse conv_feature_layers {spec!r}")
    return layers


_FAIRSEQ_RULES = [
    (r"^mask_emb$", "masked_spec_embed"),
    (
        r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$",
        r"feature_extractor.conv_layers.\1.conv.\2",
    ),
    # group norm (extractor_mode "default", first layer only) / layer norm (every layer)
    (
        r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (
        r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"^layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
    (
        r"^encoder\.pos_conv\.0\.weight_g$",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    ),
    (
        r"^encoder\.pos_conv\.0\.weight_v$",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    ),
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (
        r"^encoder\.layers\.(\d+)\.self_attn\.(k|q|v|out)_proj\.(weight|bias)$",
        r"encoder.layers.\1.attention.\2_proj.\3",
    ),
    (
        r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$",
        r"encoder.layers.\1.layer_norm.\2",
    ),
    (
        r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$",
        r"encoder.layers.\1.feed_forward.intermediate_dense.\2",
    ),
    (
        r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$",
        r"encoder.layers.\1.feed_forward.output_dense.\2",
    ),
    (
        r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$",
        r"encoder.layers.\1.final_layer_norm.\2",
    ),
]


def _map_fairseq_key(key: str) -> Optional[str]:
    for pattern, repl in _FAIRSEQ_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


# ---------------------------------------------------------------------- ours


class ConformerTeacher(Teacher):
    """A transducer of this project as a teacher: output of encoder ``layer`` (1-based;
    None: the last), and for layer-wise KD any layers with their attention
    (:meth:`layer_outputs`).

    Input: (B, T, 80) fbank. Frame shift: 4 x the fbank shift (0.04 s).
    """

    input_type = "fbank"

    def __init__(self, model: nn.Module, layer: Optional[int] = None) -> None:
        super().__init__()
        encoder = model.encoder
        num_layers = len(encoder.layers)
        layer = num_layers if layer is None else layer
        if not 1 <= layer <= num_layers:
            raise ValueError(f"layer must be in 1..{num_layers} (1-based), got {layer}")
        if encoder.config.causal:
            logging.warning("the Conformer teacher is causal: it embeds with full context")
        self.encoder = encoder.eval()
        self.layer = layer
        self.dim = encoder.config.d_model
        self.num_layers = num_layers
        self.num_heads = encoder.config.num_heads
        self.frame_shift = ENCODER_FRAME_SHIFT

    @classmethod
    def from_checkpoint(
        cls, exp_dir: Union[str, Path], epoch: int, avg: int, layer: Optional[int] = None
    ) -> "ConformerTeacher":
        """Averaged ``epoch-*.pt`` of a ``train.py`` experiment (like ``decode.py``)."""
        model, _ = load_model(Path(exp_dir), epoch, avg, torch.device("cpu"))
        return cls(model, layer)

    @torch.no_grad()
    def embed(self, x: Tensor, x_lens: Tensor) -> TeacherOutput:
        """x: (B, T, F) fbank, x_lens: (B,) valid frames."""
        out = self._encode(x, x_lens, return_qkv=False)
        emb = out.layers[self.layer - 1]
        return TeacherOutput(_zero_padding(emb, out.out_lens), out.out_lens, self.frame_shift)

    @torch.no_grad()
    def layer_outputs(
        self, x: Tensor, x_lens: Tensor, layers: Sequence[int], with_qkv: bool
    ) -> TeacherLayers:
        """Outputs (and attention q, k, v) of the 1-based ``layers`` for layer-wise KD."""
        out = self._encode(x, x_lens, return_qkv=with_qkv)
        return TeacherLayers(
            outputs={m: out.layers[m - 1] for m in layers},
            qkv={m: out.qkv[m - 1] for m in layers} if with_qkv else {},
            lens=out.out_lens,
        )

    def _encode(self, x: Tensor, x_lens: Tensor, return_qkv: bool):
        """Full-context forward (a causal teacher, too)."""
        chunk = None if not self.encoder.config.causal else -1
        return self.encoder(x, x_lens, chunk_size=chunk, left_context=chunk, return_qkv=return_qkv)


@dataclass
class TeacherSpec:
    """Which teacher to run (the ``--teacher-*`` options).

    Attributes:
        kind: ``conformer`` (an experiment folder of ``train.py``) or ``hf`` (a
            ``transformers`` directory / hub name, or a fairseq HuBERT ``.pt``).
        model: the folder, name or file.
        layer: 1-based layer whose output is embedded (None: a conformer teacher's
            last layer; layer-wise KD picks its layers itself).
        epoch, avg: checkpoints averaged (``conformer`` only).
        normalize: per-utterance waveform normalisation (``hf`` only; None: the
            model's own setting).
    """

    kind: str = option(
        "conformer",
        "conformer: a train.py experiment folder; hf: a transformers folder / hub name or a "
        "fairseq HuBERT .pt",
        flag="--teacher-kind",
        choices=("conformer", "hf"),
    )
    model: Optional[str] = option(
        None,
        "experiment folder, transformers name/folder, or fairseq .pt",
        flag="--teacher-model",
    )
    layer: Optional[int] = option(None, "1-based layer", flag="--teacher-layer")
    epoch: int = option(0, "conformer: last epoch", flag="--teacher-epoch")
    avg: int = option(1, "conformer: epochs averaged", flag="--teacher-avg")
    normalize: Optional[bool] = option(
        None,
        "hf: per-utterance waveform normalisation (auto: the model's setting)",
        flag="--teacher-normalize",
    )

    def build(self, device: torch.device) -> Teacher:
        if self.kind == "conformer":
            if self.epoch < 1:
                raise ValueError("a conformer teacher needs --teacher-epoch (its last epoch)")
            teacher: Teacher = ConformerTeacher.from_checkpoint(
                self.model, self.epoch, self.avg, self.layer
            )
        elif self.kind == "hf":
            if self.layer is None:
                raise ValueError("an hf teacher needs --teacher-layer")
            teacher = HfSslTeacher.from_pretrained(self.model, self.layer, self.normalize)
        else:
            raise ValueError(f"unknown teacher kind {self.kind!r} (conformer or hf)")
        return teacher.to(device).eval()
