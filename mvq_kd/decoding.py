"""Transducer decoding: batched greedy search, modified beam search (N-best), and true
chunk-by-chunk streaming greedy search.

Shapes: ``B`` utterances, ``T`` encoder frames, ``D`` encoder dim, ``J`` joiner dim,
``V`` vocabulary (with blank). Hypotheses are token id lists without blanks. The
decoder context of an empty hypothesis is ``context_size`` blanks (the blank
embedding is zero, as the training-time left padding).
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from mvq_kd.model.encoder import streaming_input_slices
from mvq_kd.model.transducer import Transducer

NBest = List[Tuple[List[int], float]]


@contextlib.contextmanager
def _inference(model: Transducer) -> Iterator[None]:
    """Eval mode and no autograd for the block; the training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _decoder_proj(
    model: Transducer, contexts: Sequence[Sequence[int]], device: torch.device
) -> Tensor:
    """Projected decoder output (N, J) for N contexts of ``context_size`` tokens each."""
    y = torch.tensor(contexts, dtype=torch.int64, device=device).reshape(len(contexts), -1)
    return model.joiner.decoder_proj(model.decoder(y, need_pad=False)).squeeze(1)


class _GreedyState:
    """Hypotheses (with their ``context_size`` blank prefix) and their decoder output."""

    def __init__(self, model: Transducer, batch_size: int, device: torch.device) -> None:
        self.context_size = model.decoder.context_size
        self.hyps = [[model.blank_id] * self.context_size for _ in range(batch_size)]
        self.dec = _decoder_proj(model, self.hyps, device)  # (B, J)

    def results(self) -> List[List[int]]:
        return [h[self.context_size :] for h in self.hyps]


def _greedy_frames(
    model: Transducer, enc_proj: Tensor, lens: Tensor, state: _GreedyState, max_sym_per_frame: int
) -> None:
    """Advance greedy search over frames.

    Args:
        enc_proj: (B, T, J) projected encoder frames.
        lens: (B,) valid frames per utterance (frames past it are skipped).
        state: updated in place.
        max_sym_per_frame: symbols that may be emitted on one frame.
    """
    blank = model.blank_id
    lens_list = lens.tolist()
    for t in range(enc_proj.size(1)):
        rows = torch.tensor(
            [b for b, n in enumerate(lens_list) if t < n], dtype=torch.int64, device=enc_proj.device
        )
        if rows.numel() == 0:
            break
        for _ in range(max_sym_per_frame):
            logits = model.joiner(enc_proj[rows, t], state.dec[rows], project_input=False)  # (N, V)
            tokens = logits.argmax(dim=-1)
            emit = tokens != blank
            if not bool(emit.any()):
                break
            rows, tokens = rows[emit], tokens[emit]
            for b, tok in zip(rows.tolist(), tokens.tolist()):
                state.hyps[b].append(tok)
            contexts = [state.hyps[b][-state.context_size :] for b in rows.tolist()]
            state.dec[rows] = _decoder_proj(model, contexts, enc_proj.device)


def greedy_search_batch(
    model: Transducer, encoder_out: Tensor, encoder_out_lens: Tensor, max_sym_per_frame: int = 1
) -> List[List[int]]:
    """Batched greedy search.

    Args:
        model: the transducer (put in eval mode for the call).
        encoder_out: (B, T, D) encoder output.
        encoder_out_lens: (B,) int64 valid frames.
        max_sym_per_frame: at most this many symbols per frame (1 as icefall's
            ``greedy_search_batch``).

    Returns:
        B token id lists.
    """
    with _inference(model):
        state = _GreedyState(model, encoder_out.size(0), encoder_out.device)
        _greedy_frames(
            model,
            model.joiner.encoder_proj(encoder_out),
            encoder_out_lens,
            state,
            max_sym_per_frame,
        )
        return state.results()


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b))."""
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def modified_beam_search(
    model: Transducer,
    encoder_out: Tensor,
    encoder_out_lens: Tensor,
    beam: int = 4,
    return_nbest: bool = False,
) -> Union[List[List[int]], List[NBest]]:
    """Modified beam search (at most one symbol per frame), batched over utterances.

    On every frame each utterance keeps the ``beam`` best (hypothesis, token)
    extensions of its current hypotheses, blank keeping the hypothesis as it is;
    extensions that give the same token sequence are merged by adding their
    probabilities.

    Args:
        model: the transducer (put in eval mode for the call).
        encoder_out: (B, T, D) encoder output.
        encoder_out_lens: (B,) int64 valid frames.
        beam: hypotheses kept per utterance.
        return_nbest: return every final hypothesis with its score.

    Returns:
        B best hypotheses (highest total log-probability), or with ``return_nbest`` B
        lists of up to ``beam`` distinct ``(tokens, log_prob)``, best first.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    blank = model.blank_id
    ctx = model.decoder.context_size
    device = encoder_out.device
    lens = encoder_out_lens.tolist()
    with _inference(model):
        enc_proj = model.joiner.encoder_proj(encoder_out)  # (B, T, J)
        hyps: List[Dict[Tuple[int, ...], float]] = [{(blank,) * ctx: 0.0} for _ in lens]
        for t in range(enc_proj.size(1)):
            active = [b for b, n in enumerate(lens) if t < n]
            if not active:
                break
            flat = [(b, ys, score) for b in active for ys, score in hyps[b].items()]
            dec = _decoder_proj(model, [ys[-ctx:] for _, ys, _ in flat], device)  # (N, J)
            rows = torch.tensor([b for b, _, _ in flat], dtype=torch.int64, device=device)
            logits = model.joiner(enc_proj[rows, t], dec, project_input=False)  # (N, V)
            scores = logits.log_softmax(dim=-1).double()
            scores += torch.tensor([s for _, _, s in flat], dtype=torch.float64, device=device)[
                :, None
            ]
            vocab = scores.size(1)
            start = 0
            for b in active:
                n = len(hyps[b])
                top_scores, top_idx = (
                    scores[start : start + n].reshape(-1).topk(min(beam, n * vocab))
                )
                merged: Dict[Tuple[int, ...], float] = {}
                for score, i in zip(top_scores.tolist(), top_idx.tolist()):
                    h, tok = divmod(i, vocab)
                    ys = flat[start + h][1]
                    if tok != blank:
                        ys = ys + (tok,)
                    merged[ys] = _log_add(merged[ys], score) if ys in merged else score
                hyps[b] = merged
                start += n
    nbest = [
        sorted(((list(ys[ctx:]), s) for ys, s in h.items()), key=lambda p: -p[1]) for h in hyps
    ]
    if return_nbest:
        return nbest
    return [n[0][0] for n in nbest]


def streaming_greedy_search(
    model: Transducer,
    x: Tensor,
    x_lens: Tensor,
    chunk_size: Optional[int] = None,
    left_context: Optional[int] = None,
    max_sym_per_frame: int = 1,
) -> List[List[int]]:
    """Greedy search while encoding chunk by chunk (``ConformerEncoder.streaming_forward``).

    The decoder context carries over between chunks, so the result equals
    :func:`greedy_search_batch` on ``model.encoder(x, x_lens, chunk_size, left_context)``.

    Args:
        model: transducer with a causal encoder (put in eval mode for the call).
        x: (B, T, F) fbank features.
        x_lens: (B,) int64 valid frames.
        chunk_size: encoder frames per chunk (None: ``encoder.config.chunk_size``).
        left_context: encoder frames of left context (None: the config's; -1: all).
        max_sym_per_frame: as in :func:`greedy_search_batch`.

    Returns:
        B token id lists.
    """
    encoder = model.encoder
    chunk_size = encoder.config.chunk_size if chunk_size is None else chunk_size
    with _inference(model):
        enc_state = encoder.init_state(x.size(0), x.device, left_context)
        state = _GreedyState(model, x.size(0), x.device)
        for start, end in streaming_input_slices(x.size(1), chunk_size):
            out, enc_state = encoder.streaming_forward(
                x[:, start:end], enc_state, torch.clamp(x_lens - start, min=0, max=end - start)
            )
            _greedy_frames(
                model,
                model.joiner.encoder_proj(out),
                enc_state.chunk_lens,
                state,
                max_sym_per_frame,
            )
        return state.results()
