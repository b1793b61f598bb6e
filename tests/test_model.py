"""Tests of the Conformer encoder (masked and true streaming) and the transducer."""

import json

import pytest
import torch

from mvq_kd.model import (
    ConformerEncoder,
    EncoderConfig,
    Transducer,
    TransducerConfig,
    chunk_attention_mask,
    streaming_input_slices,
)
from mvq_kd.model.encoder import pair_mean

NUM_FEATURES = 16


def tiny_encoder_config(causal: bool, **kw) -> EncoderConfig:
    base = dict(
        num_features=NUM_FEATURES,
        num_layers=2,
        d_model=32,
        num_heads=4,
        ffn_dim=64,
        conv_kernel=5,
        dropout=0.0,
        causal=causal,
        chunk_size=4,
        left_context=8,
    )
    base.update(kw)
    return EncoderConfig(**base)


def make_encoder(causal: bool, seed: int = 0, **kw) -> ConformerEncoder:
    torch.manual_seed(seed)
    return ConformerEncoder(tiny_encoder_config(causal, **kw)).eval()


def batch(lens, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x_lens = torch.tensor(lens, dtype=torch.int64)
    x = torch.randn(len(lens), max(lens), NUM_FEATURES, generator=g)
    return x, x_lens


def valid(out: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (N, D) valid frames."""
    return out[torch.arange(out.size(1))[None, :] < lens[:, None]]


def test_output_lengths_match_subsampling():
    enc = make_encoder(causal=False)
    for t in [7, 8, 10, 11, 14, 15, 33, 64]:
        x, x_lens = batch([t])
        out = enc(x, x_lens)
        assert (
            out.out.size(1)
            == int(ConformerEncoder.output_lengths(x_lens))
            == ((t - 1) // 2 - 1) // 2
        )
        assert out.out_lens.tolist() == [out.out.size(1)]
    assert ConformerEncoder.output_lengths(torch.tensor([0, 1, 2, 6, 7, 10, 11])).tolist() == [
        0,
        0,
        0,
        0,
        1,
        1,
        2,
    ]


def test_shapes_layers_and_qkv():
    enc = make_encoder(causal=True)
    x, x_lens = batch([50, 37, 20])
    res = enc(x, x_lens, return_qkv=True)
    t = ConformerEncoder.output_lengths(torch.tensor(50)).item()
    assert res.out.shape == (3, t, 32)
    assert res.out_lens.tolist() == ConformerEncoder.output_lengths(x_lens).tolist()
    assert len(res.layers) == 2 and all(h.shape == (3, t, 32) for h in res.layers)
    assert torch.allclose(res.out, enc.norm_out(res.layers[-1]))
    assert not torch.allclose(res.layers[0], res.layers[1])
    assert len(res.qkv) == 2
    for q, k, v in res.qkv:
        assert q.shape == k.shape == v.shape == (3, 4, t, 8)
    assert enc(x, x_lens).qkv is None


def test_qkv_reproduce_attention():
    """softmax(q k^T) with the chunk/padding mask, applied to v, is the layer's attention."""
    enc = make_encoder(causal=True)
    x, x_lens = batch([40, 30])
    res = enc(x, x_lens, chunk_size=2, left_context=3, return_qkv=True)
    q, k, v = res.qkv[0]
    t = q.size(2)
    mask = (
        chunk_attention_mask(t, 2, 3, q.device)[None]
        & (torch.arange(t)[None, :] < res.out_lens[:, None])[:, None]
    )
    scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask[:, None], float("-inf"))
    ctx = scores.softmax(-1) @ v  # (B, H, T', Dh)
    layer = enc.layers[0]
    h = enc.subsampling(x)
    h = h + 0.5 * layer.ff1(h)
    attn_out, _ = layer.attn(
        layer.norm_attn(h), (mask | torch.eye(t, dtype=torch.bool))[:, None], 0
    )
    expected = layer.attn.out_proj(ctx.transpose(1, 2).reshape(2, t, 32))
    assert torch.allclose(valid(attn_out, res.out_lens), valid(expected, res.out_lens), atol=1e-5)


def test_chunk_attention_mask():
    m = chunk_attention_mask(6, 2, 1, torch.device("cpu"))
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)
    assert chunk_attention_mask(4, -1, 0, torch.device("cpu")).all()
    unlimited = chunk_attention_mask(6, 2, -1, torch.device("cpu"))
    assert torch.equal(
        unlimited, torch.tensor([[j // 2 <= i // 2 for j in range(6)] for i in range(6)])
    )


@pytest.mark.parametrize("chunk_size,left_context", [(1, 0), (4, 8), (3, -1)])
def test_masked_streaming_does_not_see_beyond_chunk(chunk_size, left_context):
    enc = make_encoder(causal=True)
    x, x_lens = batch([120])
    base = enc(x, x_lens, chunk_size, left_context).out
    for chunk in [0, 2, 5]:
        end = (chunk + 1) * chunk_size  # first encoder frame of the next chunk
        x2 = x.clone()
        x2[:, 4 * end + 3 :] = torch.randn_like(x2[:, 4 * end + 3 :])  # frames no frame < end sees
        out = enc(x2, x_lens, chunk_size, left_context).out
        assert torch.allclose(out[:, :end], base[:, :end], atol=1e-6)
        assert not torch.allclose(out[:, end:], base[:, end:], atol=1e-3)


def test_noncausal_sees_the_future():
    enc = make_encoder(causal=False)
    x, x_lens = batch([80])
    base = enc(x, x_lens).out
    x2 = x.clone()
    x2[:, 60:] += 1.0
    assert not torch.allclose(enc(x2, x_lens).out[:, 0], base[:, 0], atol=1e-4)
    with pytest.raises(ValueError):
        enc(x, x_lens, chunk_size=4)


def test_causal_full_context_sees_the_future():
    enc = make_encoder(causal=True)
    x, x_lens = batch([80])
    x2 = x.clone()
    x2[:, 60:] += 1.0
    assert not torch.allclose(
        enc(x2, x_lens, chunk_size=-1).out[:, 0], enc(x, x_lens, chunk_size=-1).out[:, 0]
    )


@pytest.mark.parametrize(
    "chunk_size,left_context", [(1, 0), (1, -1), (2, 3), (4, 8), (5, 2), (8, -1), (16, 4)]
)
def test_streaming_encode_equals_masked_forward(chunk_size, left_context):
    enc = make_encoder(causal=True)
    x, x_lens = batch([131, 97, 60, 12])
    masked = enc(x, x_lens, chunk_size, left_context)
    out, out_lens = enc.streaming_encode(x, x_lens, chunk_size, left_context)
    assert out.shape == masked.out.shape
    assert torch.equal(out_lens, masked.out_lens)
    assert torch.allclose(valid(out, out_lens), valid(masked.out, out_lens), atol=1e-4)
    full = enc(x, x_lens, chunk_size=-1).out
    assert not torch.allclose(valid(full, out_lens), valid(masked.out, out_lens), atol=1e-3)


def test_streaming_defaults_and_chunk_lens():
    enc = make_encoder(causal=True)
    x, x_lens = batch([75, 40])
    out, _ = enc.streaming_encode(x, x_lens)  # config chunk_size=4, left_context=8
    assert torch.allclose(out[0], enc(x[:1], x_lens[:1]).out[0], atol=1e-4)
    state = enc.init_state(2, x.device)
    emitted = []
    for start, end in streaming_input_slices(x.size(1), 4):
        chunk, state = enc.streaming_forward(
            x[:, start:end], state, torch.clamp(x_lens - start, 0, end - start)
        )
        assert chunk.size(1) <= 4
        emitted.append(state.chunk_lens)
        assert all(k.size(2) <= 8 for k, _ in state.attn_cache)
    assert torch.stack(emitted).sum(0).tolist() == ConformerEncoder.output_lengths(x_lens).tolist()
    assert state.offset == out.size(1)


def test_streaming_frame_by_frame():
    """Feeding one input frame per call emits 0 or 1 encoder frames = chunk size 1."""
    enc = make_encoder(causal=True)
    x, x_lens = batch([41, 30])
    state = enc.init_state(2, x.device, left_context=3)
    outs = []
    for t in range(x.size(1)):
        out, state = enc.streaming_forward(x[:, t : t + 1], state, (x_lens > t).long())
        assert out.size(1) == (1 if t >= 6 and (t - 6) % 4 == 0 else 0)
        outs.append(out)
    masked = enc(x, x_lens, chunk_size=1, left_context=3)
    out_lens = masked.out_lens
    assert torch.allclose(
        valid(torch.cat(outs, 1), out_lens), valid(masked.out, out_lens), atol=1e-4
    )


def test_streaming_needs_causal_model():
    with pytest.raises(ValueError):
        make_encoder(causal=False).init_state(1, torch.device("cpu"))


def test_streaming_input_slices():
    assert streaming_input_slices(40, 2) == [(0, 11), (11, 19), (19, 27), (27, 35), (35, 40)]
    with pytest.raises(ValueError):
        streaming_input_slices(40, -1)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(causal):
    enc = make_encoder(causal=causal)
    lens = [90, 61, 33, 9]
    x, x_lens = batch(lens)
    out = enc(x, x_lens)
    for b, n in enumerate(lens):
        alone = enc(x[b : b + 1, :n], x_lens[b : b + 1]).out[0]
        assert alone.size(0) == out.out_lens[b]
        assert torch.allclose(alone, out.out[b, : alone.size(0)], atol=1e-5)


def test_pair_mean_keeps_padding_out():
    h = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    h[1, 3:] = 1e6  # padding of an utterance with 3 valid frames
    means, lens = pair_mean(h, torch.tensor([5, 3]))
    assert lens.tolist() == [3, 2]
    assert means[0, :, 0].tolist() == [0.5, 2.5, 4.0]  # the odd last frame alone
    assert means[1, :, 0].tolist() == [5.5, 7.0, 0.0]  # frame 7 alone, padding out


def test_half_rate_layers_run_at_half_the_frames():
    enc = make_encoder(causal=False, num_layers=4, half_rate_layers=2)
    seen = []
    for layer in enc.layers:
        layer.register_forward_hook(lambda m, args, out: seen.append(args[0].size(1)))
    x, x_lens = batch([90, 61, 33, 9])
    res = enc(x, x_lens, return_qkv=True)
    t = res.out.size(1)
    assert seen == [t, (t + 1) // 2, (t + 1) // 2, t]  # layers 2-3 at half the frames
    assert res.out_lens.tolist() == ConformerEncoder.output_lengths(x_lens).tolist()
    assert all(h.shape == (4, t, 32) for h in res.layers)
    assert all(z.shape == (4, 4, t, 8) for qkv in res.qkv for z in qkv)
    assert torch.allclose(res.out, enc.norm_out(res.layers[-1]))
    # Each frame pair of a half-rate layer shares its attention row.
    q = res.qkv[1][0]
    assert torch.equal(q[:, :, 0], q[:, :, 1]) and not torch.equal(q[:, :, 1], q[:, :, 2])
    for b, n in enumerate([90, 61, 33, 9]):  # odd and even lengths: padding stays out
        alone = enc(x[b : b + 1, :n], x_lens[b : b + 1]).out[0]
        assert torch.allclose(alone, res.out[b, : alone.size(0)], atol=1e-5)
    full_rate = make_encoder(causal=False, num_layers=4)
    assert full_rate.state_dict().keys() == enc.state_dict().keys()  # the same parameters
    full_rate.load_state_dict(enc.state_dict())
    assert not torch.allclose(full_rate(x, x_lens).out, res.out)


def test_half_rate_layers_config():
    with pytest.raises(ValueError, match="non-causal"):
        tiny_encoder_config(causal=True, num_layers=4, half_rate_layers=1)
    with pytest.raises(ValueError, match="0..2"):
        tiny_encoder_config(causal=False, num_layers=4, half_rate_layers=3)
    with pytest.raises(ValueError, match="0..0"):
        tiny_encoder_config(causal=False, num_layers=2, half_rate_layers=1)


def test_eval_uses_config_context_and_training_samples_it():
    enc = make_encoder(causal=True, max_train_chunk_size=6, full_context_prob=0.3)
    x, x_lens = batch([100])
    assert torch.equal(enc(x, x_lens).out, enc(x, x_lens, 4, 8).out)
    enc.train()  # dropout is 0: outputs differ only through the sampled chunk/left context
    torch.manual_seed(0)
    outs = [enc(x, x_lens).out for _ in range(12)]
    distinct = [o for i, o in enumerate(outs) if not any(torch.allclose(o, p) for p in outs[:i])]
    assert len(distinct) > 3
    full_train = enc(x, x_lens, chunk_size=-1).out  # explicit context is not sampled
    assert torch.equal(full_train, enc.eval()(x, x_lens, chunk_size=-1).out)


VOCAB = 12


def tiny_transducer(causal: bool = True, seed: int = 0, **encoder) -> Transducer:
    torch.manual_seed(seed)
    cfg = TransducerConfig(
        encoder=tiny_encoder_config(causal, **encoder),
        vocab_size=VOCAB,
        decoder_dim=24,
        joiner_dim=24,
        context_size=2,
    )
    return Transducer(cfg)


def toy_batch():
    g = torch.Generator().manual_seed(3)
    x_lens = torch.tensor([60, 45, 38])
    x = torch.randn(3, 60, NUM_FEATURES, generator=g)
    y_lens = torch.tensor([5, 3, 4])
    y = torch.randint(1, VOCAB, (3, 5), generator=g)
    y[1, 3:] = -1  # padding values are ignored
    return x, x_lens, y, y_lens


def test_transducer_losses_and_gradients():
    model = tiny_transducer()
    model.train()
    x, x_lens, y, y_lens = toy_batch()
    res = model(x, x_lens, y, y_lens, prune_range=3, return_qkv=True)
    assert res.simple_loss.dim() == 0 and torch.isfinite(res.simple_loss)
    assert res.pruned_loss.dim() == 0 and torch.isfinite(res.pruned_loss)
    assert res.simple_loss.item() > 0 and res.pruned_loss.item() > 0
    assert res.encoder.qkv is not None and len(res.encoder.layers) == 2
    (res.simple_loss + res.pruned_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_transducer_loss_is_batch_sum():
    model = tiny_transducer().eval()
    x, x_lens, y, y_lens = toy_batch()
    res = model(x, x_lens, y, y_lens, prune_range=3)
    parts = [
        model(
            x[b : b + 1, : x_lens[b]],
            x_lens[b : b + 1],
            y[b : b + 1, : y_lens[b]],
            y_lens[b : b + 1],
            prune_range=3,
        )
        for b in range(3)
    ]
    assert torch.allclose(res.simple_loss, sum(p.simple_loss for p in parts), rtol=1e-4)
    assert torch.allclose(res.pruned_loss, sum(p.pruned_loss for p in parts), rtol=1e-4)


@pytest.mark.parametrize(
    "encoder", [dict(causal=True), dict(causal=False, num_layers=3, half_rate_layers=1)]
)
def test_training_reduces_loss(encoder):
    model = tiny_transducer(**encoder)
    model.train()
    x, x_lens, y, y_lens = toy_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        res = model(x, x_lens, y, y_lens, prune_range=3, chunk_size=-1)
        loss = 0.5 * res.simple_loss + res.pruned_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_config_dict_round_trip():
    model = tiny_transducer()
    d = json.loads(json.dumps(model.config.to_dict()))
    assert TransducerConfig.from_dict(d) == model.config
    rebuilt = Transducer.from_dict(d)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.num_params() == model.num_params() == sum(p.numel() for p in model.parameters())
    with pytest.raises(TypeError):
        TransducerConfig.from_dict({**d, "bogus": 1})
    # Checkpoints written before an encoder option existed load with its default.
    del d["encoder"]["half_rate_layers"]
    assert TransducerConfig.from_dict(d) == model.config


def test_ctc_head_is_optional_and_trained():
    plain = tiny_transducer()
    assert plain.ctc_output is None
    x, x_lens, y, y_lens = toy_batch()
    assert plain(x, x_lens, y, y_lens, prune_range=3).ctc_loss is None
    torch.manual_seed(0)
    cfg = TransducerConfig(
        encoder=tiny_encoder_config(True),
        vocab_size=VOCAB,
        decoder_dim=24,
        joiner_dim=24,
        ctc_head=True,
    )
    model = Transducer(cfg).train()
    res = model(x, x_lens, y, y_lens, prune_range=3)
    assert res.ctc_loss is not None and torch.isfinite(res.ctc_loss) and res.ctc_loss > 0
    # CTC of one utterance alone equals its share of the batch sum (padding ignored)
    model.eval()
    full = model(x, x_lens, y, y_lens, prune_range=3).ctc_loss
    parts = sum(
        model(
            x[i : i + 1, : x_lens[i]],
            x_lens[i : i + 1],
            y[i : i + 1, : y_lens[i]],
            y_lens[i : i + 1],
            prune_range=3,
        ).ctc_loss
        for i in range(3)
    )
    torch.testing.assert_close(full, parts, rtol=1e-4, atol=1e-4)
    model.train()
    (res.simple_loss + res.pruned_loss + res.ctc_loss).backward()
    assert all(p.grad is not None for p in model.parameters()), "DDP needs every gradient"


def test_feature_normalization_buffers():
    enc = make_encoder(causal=True)
    x, x_lens = batch([40, 33])
    ref = enc(x, x_lens).out
    mean, std = torch.randn(NUM_FEATURES), torch.rand(NUM_FEATURES) + 0.5
    enc.subsampling.set_feature_stats(mean, std)
    # normalizing inside equals normalizing the input outside with identity stats
    moved = enc(x * std + mean, x_lens).out
    torch.testing.assert_close(moved, ref, rtol=1e-4, atol=1e-4)
    # the statistics are part of the state dict (checkpoints carry them) ...
    state = enc.state_dict()
    assert torch.equal(state["subsampling.feat_mean"], mean)
    # ... and streaming uses them too
    out, lens = enc.streaming_encode(x * std + mean, x_lens)
    torch.testing.assert_close(valid(out, lens), valid(moved, lens), rtol=1e-4, atol=1e-4)
