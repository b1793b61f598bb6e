"""Teacher backends: exact batching, the fairseq loader, our Conformer as a teacher."""

import sys
import types

import pytest
import torch
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from mvq_kd.teacher import ConformerTeacher, HfSslTeacher, load_fairseq_hubert

TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


def waves(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        x[i, :n] = 0.1 * torch.randn(n, generator=g) + 0.05
    return x, torch.tensor(lengths)


def one_by_one(teacher, x, lens):
    return [
        teacher.embed(x[i : i + 1, : lens[i]], lens[i : i + 1]).embeddings[0] for i in range(len(x))
    ]


@pytest.mark.parametrize(
    "cls,config,norm",
    [
        (HubertModel, HubertConfig, "group"),
        (HubertModel, HubertConfig, "layer"),
        (Wav2Vec2Model, Wav2Vec2Config, "layer"),
        (WavLMModel, WavLMConfig, "group"),
    ],
)
@pytest.mark.parametrize("normalize", [False, True])
def test_batched_equals_one_by_one(cls, config, norm, normalize):
    torch.manual_seed(0)
    stable = norm == "layer"
    model = cls(config(feat_extract_norm=norm, do_stable_layer_norm=stable, **TINY))
    teacher = HfSslTeacher(model, layer=2, normalize=normalize)
    x, lens = waves([4000, 2500, 1203])
    out = teacher.embed(x, lens)
    assert out.embeddings.shape[0] == 3 and out.embeddings.shape[2] == 32
    assert out.frame_shift == 20 / 16000
    for i, ref in enumerate(one_by_one(teacher, x, lens)):
        n = int(out.lens[i])
        assert n == ref.size(0)
        assert torch.allclose(out.embeddings[i, :n], ref, atol=1e-4), (i, norm, normalize)
        assert out.embeddings[i, n:].abs().sum() == 0


def test_layer_is_one_based_and_upper_layers_dropped():
    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**TINY)).eval()
    x, lens = waves([3000])
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
    teacher = HfSslTeacher(model, layer=1, normalize=False)
    assert len(teacher.model.encoder.layers) == 1
    assert torch.allclose(teacher.embed(x, lens).embeddings[0], ref[1][0], atol=1e-5)
    with pytest.raises(ValueError, match="layer must be in 0..1"):
        HfSslTeacher(teacher.model, layer=5, normalize=False)


# fairseq's parameter names of a HuBERT model (fairseq/models/hubert/hubert.py +
# wav2vec2.py): ConvFeatureExtractionModel, post_extract_proj, pos_conv with weight
# norm, TransformerSentenceEncoderLayer.
def fairseq_state(hf: HubertModel, mode: str):
    sd = hf.state_dict()
    out = {"mask_emb": sd["masked_spec_embed"], "label_embs_concat": torch.randn(10, 8)}
    for i in range(len(TINY["conv_dim"])):
        out[f"feature_extractor.conv_layers.{i}.0.weight"] = sd[
            f"feature_extractor.conv_layers.{i}.conv.weight"
        ]
        ln = f"feature_extractor.conv_layers.{i}.layer_norm."
        if mode == "default" and i == 0:
            out[f"feature_extractor.conv_layers.{i}.2.weight"] = sd[ln + "weight"]
            out[f"feature_extractor.conv_layers.{i}.2.bias"] = sd[ln + "bias"]
        elif mode == "layer_norm":
            out[f"feature_extractor.conv_layers.{i}.2.1.weight"] = sd[ln + "weight"]
            out[f"feature_extractor.conv_layers.{i}.2.1.bias"] = sd[ln + "bias"]
    out["layer_norm.weight"] = sd["feature_projection.layer_norm.weight"]
    out["layer_norm.bias"] = sd["feature_projection.layer_norm.bias"]
    out["post_extract_proj.weight"] = sd["feature_projection.projection.weight"]
    out["post_extract_proj.bias"] = sd["feature_projection.projection.bias"]
    pc = "encoder.pos_conv_embed.conv."
    out["encoder.pos_conv.0.weight_g"] = sd[pc + "parametrizations.weight.original0"]
    out["encoder.pos_conv.0.weight_v"] = sd[pc + "parametrizations.weight.original1"]
    out["encoder.pos_conv.0.bias"] = sd[pc + "bias"]
    out["encoder.layer_norm.weight"] = sd["encoder.layer_norm.weight"]
    out["encoder.layer_norm.bias"] = sd["encoder.layer_norm.bias"]
    for i in range(TINY["num_hidden_layers"]):
        p, q = f"encoder.layers.{i}.", f"encoder.layers.{i}."
        for w in ("weight", "bias"):
            for proj in ("k", "q", "v", "out"):
                out[f"{p}self_attn.{proj}_proj.{w}"] = sd[f"{q}attention.{proj}_proj.{w}"]
            out[f"{p}self_attn_layer_norm.{w}"] = sd[f"{q}layer_norm.{w}"]
            out[f"{p}fc1.{w}"] = sd[f"{q}feed_forward.intermediate_dense.{w}"]
            out[f"{p}fc2.{w}"] = sd[f"{q}feed_forward.output_dense.{w}"]
            out[f"{p}final_layer_norm.{w}"] = sd[f"{q}final_layer_norm.{w}"]
    return out


def fairseq_cfg(mode: str):
    return {
        "_name": "hubert",
        "extractor_mode": mode,
        "encoder_layers": TINY["num_hidden_layers"],
        "encoder_embed_dim": TINY["hidden_size"],
        "encoder_ffn_embed_dim": TINY["intermediate_size"],
        "encoder_attention_heads": TINY["num_attention_heads"],
        "activation_fn": "gelu",
        "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] + [(16,2,2)]",
        "conv_bias": False,
        "layer_norm_first": mode == "layer_norm",
        "conv_pos": TINY["num_conv_pos_embeddings"],
        "conv_pos_groups": TINY["num_conv_pos_embedding_groups"],
    }


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
@pytest.mark.parametrize("finetuned", [False, True])
def test_fairseq_checkpoint_loads_without_fairseq(tmp_path, mode, finetuned):
    torch.manual_seed(0)
    hf = HubertModel(
        HubertConfig(
            feat_extract_norm="group" if mode == "default" else "layer",
            do_stable_layer_norm=mode == "layer_norm",
            **TINY,
        )
    ).eval()
    state = fairseq_state(hf, mode)
    cfg = {"model": fairseq_cfg(mode), "task": {"normalize": mode == "layer_norm"}}
    if finetuned:
        state = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()}
        state["w2v_encoder.proj.weight"] = torch.randn(5, 32)
        cfg = {"model": {"_name": "hubert_ctc", "w2v_args": cfg}, "task": {}}
    # A pickled fairseq object (as real checkpoints carry), with fairseq absent at load.
    fake = types.ModuleType("fairseq.data.dictionary")

    class Dictionary:
        pass

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    fake.Dictionary = Dictionary
    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary")
    for name in names:
        sys.modules[name] = fake if name == names[-1] else types.ModuleType(name)
    try:
        ckpt = {"cfg": cfg, "model": state, "task_state": {"dictionaries": [Dictionary()]}}
        torch.save(ckpt, tmp_path / "hubert.pt")
    finally:
        for name in names:
            del sys.modules[name]

    model, normalize = load_fairseq_hubert(tmp_path / "hubert.pt")
    assert normalize == (mode == "layer_norm")  # the pre-training task setting
    x, lens = waves([3000, 2000])
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True).hidden_states[2]
    teacher = HfSslTeacher.from_pretrained(str(tmp_path / "hubert.pt"), layer=2, normalize=False)
    got = teacher.embed(x[:1], lens[:1]).embeddings[0]
    assert torch.allclose(got, ref[0], atol=1e-4)


def test_fairseq_unsupported_checkpoint(tmp_path):
    torch.save(
        {"cfg": {"model": {"_name": "wav2vec2"}, "task": {}}, "model": {}}, tmp_path / "w.pt"
    )
    with pytest.raises(ValueError, match="unsupported fairseq model 'wav2vec2'"):
        load_fairseq_hubert(tmp_path / "w.pt")
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a fairseq checkpoint"):
        load_fairseq_hubert(tmp_path / "x.pt")
    hf = HubertModel(HubertConfig(**TINY))
    state = fairseq_state(hf, "default")
    state["encoder.extra.weight"] = torch.zeros(1)
    torch.save(
        {"cfg": {"model": fairseq_cfg("default"), "task": {}}, "model": state}, tmp_path / "e.pt"
    )
    with pytest.raises(ValueError, match="unexpected weight 'encoder.extra.weight'"):
        load_fairseq_hubert(tmp_path / "e.pt")


def test_conformer_teacher_layers():
    from mvq_kd.model.encoder import EncoderConfig
    from mvq_kd.model.transducer import Transducer, TransducerConfig

    torch.manual_seed(0)
    enc = EncoderConfig(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, conv_kernel=5)
    model = Transducer(TransducerConfig(enc, vocab_size=20, decoder_dim=16, joiner_dim=16)).eval()
    teacher = ConformerTeacher(model, layer=1)
    x = torch.randn(2, 60, 80)
    lens = torch.tensor([60, 41])
    out = teacher.embed(x, lens)
    assert out.frame_shift == 0.04 and out.embeddings.shape == (2, 14, 32)
    assert out.lens.tolist() == [14, 9]
    single = teacher.embed(x[1:, :41], lens[1:]).embeddings[0]
    assert torch.allclose(out.embeddings[1, :9], single, atol=1e-5)
    with pytest.raises(ValueError, match="1..2"):
        ConformerTeacher(model, layer=3)
