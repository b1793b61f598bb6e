"""Tests of greedy search, modified beam search and streaming greedy search.

A tiny causal transducer is first trained for a moment on a fixed toy batch, so that
its hypotheses are non-empty and mostly memorised.
"""

import copy
from typing import List, Tuple

import pytest
import torch

from mvq_kd.decoding import greedy_search_batch, modified_beam_search, streaming_greedy_search
from mvq_kd.model import Transducer, TransducerConfig
from tests.test_model import NUM_FEATURES, tiny_encoder_config

VOCAB = 10


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    enc = tiny_encoder_config(True, subsampling_channels=32)
    model = Transducer(
        TransducerConfig(encoder=enc, vocab_size=VOCAB, decoder_dim=32, joiner_dim=32)
    )
    g = torch.Generator().manual_seed(0)
    x_lens = torch.tensor([80, 70, 60, 50])
    x = torch.randn(4, 80, NUM_FEATURES, generator=g)
    y_lens = torch.tensor([6, 5, 4, 3])
    y = torch.randint(1, VOCAB, (4, 6), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        res = model(x, x_lens, y, y_lens, prune_range=3)
        loss = 0.5 * res.simple_loss + res.pruned_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, x, x_lens


def reference_greedy(
    model: Transducer, enc: torch.Tensor, max_sym: int = 1
) -> Tuple[List[int], float]:
    """Per-utterance greedy search on enc (T, D); returns tokens and the path log-prob."""
    blank, ctx = model.blank_id, model.decoder.context_size
    hyp = [blank] * ctx
    logp_total = 0.0
    with torch.no_grad():
        for t in range(enc.size(0)):
            for _ in range(max_sym):
                dec = model.decoder(torch.tensor([hyp[-ctx:]]), need_pad=False)[0, 0]
                logp = model.joiner(enc[t], dec).log_softmax(-1)
                tok = int(logp.argmax())
                logp_total += float(logp[tok])
                if tok == blank:
                    break
                hyp.append(tok)
    return hyp[ctx:], logp_total


def exact_log_prob(model: Transducer, enc: torch.Tensor, tokens: List[int]) -> float:
    """log P(tokens) summed over all alignments with at most one symbol per frame."""
    blank, ctx = model.blank_id, model.decoder.context_size
    full = [blank] * ctx + tokens
    with torch.no_grad():
        contexts = torch.tensor([full[u : u + ctx] for u in range(len(tokens) + 1)])
        dec = model.decoder(contexts, need_pad=False)[:, 0]  # (U + 1, C)
        logp = model.joiner(enc[:, None], dec[None]).log_softmax(-1).double()  # (T, U + 1, V)
    u_len = len(tokens)
    alpha = torch.full((u_len + 1,), float("-inf"), dtype=torch.float64)
    alpha[0] = 0.0
    for t in range(enc.size(0)):
        stay = alpha + logp[t, :, blank]
        emit = torch.full_like(alpha, float("-inf"))
        emit[1:] = (
            alpha[:-1] + logp[t, torch.arange(u_len), torch.tensor(tokens, dtype=torch.int64)]
        )
        alpha = torch.logaddexp(stay, emit)
    return float(alpha[u_len])


def encode(model, x, x_lens, chunk_size=None, left_context=None):
    with torch.no_grad():
        out = model.encoder(x, x_lens, chunk_size, left_context)
    return out.out, out.out_lens


@pytest.mark.parametrize("max_sym", [1, 3])
def test_greedy_batch_equals_reference(trained, max_sym):
    model, x, x_lens = trained
    enc, lens = encode(model, x, x_lens)
    hyps = greedy_search_batch(model, enc, lens, max_sym_per_frame=max_sym)
    assert all(len(h) > 0 for h in hyps)
    assert len({tuple(h) for h in hyps}) > 1
    for b in range(enc.size(0)):
        assert hyps[b] == reference_greedy(model, enc[b, : lens[b]], max_sym)[0]


def test_greedy_several_symbols_per_frame(trained):
    model, x, x_lens = trained
    model = copy.deepcopy(model)
    enc, lens = encode(model, x, x_lens)
    with torch.no_grad():
        model.joiner.output_linear.bias[model.blank_id] -= 100.0  # never blank
    hyps = greedy_search_batch(model, enc, lens, max_sym_per_frame=3)
    assert [len(h) for h in hyps] == [3 * n for n in lens.tolist()]
    # Find a blank bias where some frames emit several symbols and others none.
    for _ in range(100):
        with torch.no_grad():
            model.joiner.output_linear.bias[model.blank_id] += 1.0
        hyps = greedy_search_batch(model, enc, lens, max_sym_per_frame=3)
        if any(n < len(h) < 3 * n for h, n in zip(hyps, lens.tolist())):
            break
    else:
        pytest.fail("no blank bias gives a mixture of several and zero symbols per frame")
    for b in range(enc.size(0)):
        assert hyps[b] == reference_greedy(model, enc[b, : lens[b]], 3)[0]


def test_beam_1_equals_greedy(trained):
    model, x, x_lens = trained
    enc, lens = encode(model, x, x_lens, chunk_size=-1)
    greedy = greedy_search_batch(model, enc, lens)
    assert modified_beam_search(model, enc, lens, beam=1) == greedy
    nbest = modified_beam_search(model, enc, lens, beam=1, return_nbest=True)
    for b, n in enumerate(nbest):
        assert len(n) == 1 and n[0][0] == greedy[b]
        assert n[0][1] == pytest.approx(reference_greedy(model, enc[b, : lens[b]])[1], abs=1e-4)


def test_nbest_sorted_unique_and_consistent(trained):
    model, x, x_lens = trained
    enc, lens = encode(model, x, x_lens)
    nbest = modified_beam_search(model, enc, lens, beam=4, return_nbest=True)
    best = modified_beam_search(model, enc, lens, beam=4)
    assert len(nbest) == enc.size(0)
    assert any(len(n) > 1 for n in nbest)
    for b, n in enumerate(nbest):
        assert 1 <= len(n) <= 4
        scores = [s for _, s in n]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h) for h, _ in n}) == len(n)
        assert n[0][0] == best[b]
        for tokens, score in n:
            # The beam sums a subset of the alignments of its hypothesis.
            assert score <= exact_log_prob(model, enc[b, : lens[b]], tokens) + 1e-6
        # Batching does not change the search.
        alone = modified_beam_search(
            model, enc[b : b + 1, : lens[b]], lens[b : b + 1], beam=4, return_nbest=True
        )[0]
        assert [h for h, _ in alone] == [h for h, _ in n]
        assert [s for _, s in alone] == pytest.approx(scores, abs=1e-4)


def test_exhaustive_beam_is_exact(trained):
    """A beam wider than the hypothesis space keeps every alignment: after merging,
    each score is the exact total log-prob of its token sequence."""
    model, x, x_lens = trained
    enc, lens = encode(model, x, x_lens)
    num_frames = 3  # 1 + 9 + 9^2 + 9^3 = 820 sequences with one symbol per frame at most
    nbest = modified_beam_search(
        model, enc[:2, :num_frames], torch.full((2,), num_frames), beam=1000, return_nbest=True
    )
    for b, n in enumerate(nbest):
        assert len(n) == sum((VOCAB - 1) ** k for k in range(num_frames + 1))
        for tokens, score in n[::37] + n[-3:]:
            assert score == pytest.approx(
                exact_log_prob(model, enc[b, :num_frames], tokens), abs=1e-5
            )
        total = torch.logsumexp(torch.tensor([s for _, s in n], dtype=torch.float64), 0)
        assert float(total) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("chunk_size,left_context", [(4, 8), (2, -1), (1, 0), (None, None)])
def test_streaming_greedy_equals_masked_greedy(trained, chunk_size, left_context):
    model, x, x_lens = trained
    enc, lens = encode(model, x, x_lens, chunk_size, left_context)
    expected = greedy_search_batch(model, enc, lens)
    assert all(len(h) > 0 for h in expected)
    assert streaming_greedy_search(model, x, x_lens, chunk_size, left_context) == expected


def test_decoding_restores_training_mode(trained):
    model, x, x_lens = trained
    enc, lens = encode(model, x, x_lens)
    model.train()
    try:
        greedy_search_batch(model, enc, lens)
        modified_beam_search(model, enc, lens, beam=2)
        streaming_greedy_search(model, x, x_lens)
        assert model.training
    finally:
        model.eval()
