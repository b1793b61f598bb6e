"""Decoding of cut sets and icefall-style result files (the pipeline of ``decode.py``).

The models come from :func:`mvq_kd.checkpoint.load_model`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from lhotse import CutSet

from mvq_kd.cli import option
from mvq_kd.data.text import TEXT_NORMS, normalize_text
from mvq_kd.dataset import AsrDataset, make_loader
from mvq_kd.decoding import greedy_search_batch, modified_beam_search, streaming_greedy_search
from mvq_kd.model.transducer import Transducer
from mvq_kd.utils import atomic_path

DECODING_METHODS = ("greedy_search", "modified_beam_search")


def decode_suffix(
    epoch: int,
    avg: int,
    method: str = "greedy_search",
    beam_size: int = 4,
    streaming: Optional[str] = None,
    chunk: Optional[int] = None,
    left: Optional[int] = None,
) -> str:
    """The settings part of the result file names written by ``decode.py``.

    ``decode.py`` writes ``<exp-dir>/<method>/wer-summary-<part>-<suffix>.txt`` with this suffix.

    Args:
        epoch, avg: the ``--epoch`` and ``--avg`` of the decode.
        method: the decoding method; beam search adds ``-beam-<beam_size>``.
        streaming: None for a full-context model; for a causal model, ``simulated`` or
            ``chunked``, which adds ``-<streaming>-chunk-<chunk>-left-<left>``.
        chunk, left: the chunk size and left context (encoder frames) actually used; needed
            with ``streaming``.

    Returns:
        e.g. ``epoch-10-avg-3-beam-4`` or ``epoch-10-avg-3-simulated-chunk-8-left-32``.
    """
    suffix = f"epoch-{epoch}-avg-{avg}"
    if method == "modified_beam_search":
        suffix += f"-beam-{beam_size}"
    if streaming is not None:
        if chunk is None or left is None:
            raise ValueError("decode_suffix of a streaming decode needs its chunk and left")
        suffix += f"-{streaming}-chunk-{chunk}-left-{left}"
    return suffix


@dataclass
class DecodeOptions:
    """How to decode.

    Attributes:
        method: ``greedy_search`` or ``modified_beam_search``.
        beam: beam size of modified beam search.
        chunk_size, left_context: for a causal model, the attention chunk and left
            context in encoder frames (None: the model's defaults; -1: full context).
        streaming: ``simulated`` (masked full-utterance forward) or ``chunked`` (true
            chunk-by-chunk encoding with cached state; greedy search only).
        text_norm: normalisation of references and hypotheses before scoring
            (:func:`mvq_kd.data.text.normalize_text`; the manifests' text went through it).
    """

    method: str = option(
        "greedy_search",
        "search of the hypotheses",
        flag="--decoding-method",
        choices=DECODING_METHODS,
    )
    beam: int = option(4, "beam of modified beam search", flag="--beam-size")
    chunk_size: Optional[int] = option(
        None, "encoder frames per chunk of a causal model (None: the model's)"
    )
    left_context: Optional[int] = option(
        None, "encoder frames of left context of a causal model (None: the model's; -1: all)"
    )
    streaming: str = option(
        "simulated",
        "causal models: simulated (masked full-utterance forward) or chunked (chunk by chunk "
        "with cached state; greedy search only)",
        choices=("simulated", "chunked"),
    )
    text_norm: str = option(
        "upper",
        "references and hypotheses scored after it: upper (upper case, no punctuation) or none",
        choices=TEXT_NORMS,
    )

    def __post_init__(self) -> None:
        if self.method not in DECODING_METHODS:
            raise ValueError(f"Unknown decoding method {self.method}; use {DECODING_METHODS}")
        if self.streaming not in ("simulated", "chunked"):
            raise ValueError("streaming must be 'simulated' or 'chunked'")
        if self.streaming == "chunked" and self.method != "greedy_search":
            raise ValueError("chunk-by-chunk decoding supports greedy_search only")


@torch.no_grad()
def decode_cuts(
    model: Transducer,
    sp,
    cuts: CutSet,
    opts: DecodeOptions,
    device: torch.device,
    max_duration: float = 300.0,
) -> List[Tuple[str, List[str], List[str]]]:
    """Decode every cut.

    Returns:
        ``(cut_id, reference words, hypothesis words)`` per cut, sorted by cut id.
    """
    from lhotse.dataset import SimpleCutSampler
    from tqdm import tqdm

    causal = model.encoder.config.causal
    if opts.streaming == "chunked" and not causal:
        raise ValueError("chunk-by-chunk decoding needs a causal (streaming) model")
    sampler = SimpleCutSampler(cuts, max_duration=max_duration)
    loader = make_loader(AsrDataset(), sampler, num_workers=0)
    results = []
    for batch in tqdm(loader, desc="decoding", leave=False):
        x = batch["features"].to(device)
        x_lens = batch["feature_lens"].to(device)
        if opts.streaming == "chunked":
            hyps = streaming_greedy_search(model, x, x_lens, opts.chunk_size, opts.left_context)
        else:
            enc = model.encoder(x, x_lens, opts.chunk_size, opts.left_context)
            if opts.method == "greedy_search":
                hyps = greedy_search_batch(model, enc.out, enc.out_lens)
            else:
                hyps = modified_beam_search(model, enc.out, enc.out_lens, beam=opts.beam)
        for cut, text, hyp in zip(batch["cuts"], batch["texts"], hyps):
            ref = normalize_text(text or "", opts.text_norm).split()
            results.append((cut.id, ref, normalize_text(sp.decode(hyp), opts.text_norm).split()))
    return sorted(results)


def word_errors(ref: List[str], hyp: List[str]) -> Tuple[int, int, int]:
    """(substitutions, deletions, insertions) of ``hyp`` against ``ref``."""
    import kaldialign

    sub = dele = ins = 0
    for r, h in kaldialign.align(ref, hyp, "*"):
        if r == "*":
            ins += 1
        elif h == "*":
            dele += 1
        elif r != h:
            sub += 1
    return sub, dele, ins


def write_results(
    out_dir: Path, part: str, suffix: str, results: List[Tuple[str, List[str], List[str]]]
) -> float:
    """Write ``recogs-``, ``errs-`` and ``wer-summary-<part>-<suffix>.txt``; return WER %."""
    import kaldialign

    totals = [0, 0, 0]
    num_words = 0
    err_lines = []
    for cut_id, ref, hyp in results:
        s, d, i = word_errors(ref, hyp)
        totals = [totals[0] + s, totals[1] + d, totals[2] + i]
        num_words += len(ref)
        if s + d + i:
            ali = kaldialign.align(ref, hyp, "*")
            words = " ".join(r if r == h else f"({r}->{h})" for r, h in ali)
            err_lines.append(f"{cut_id}:\t{words}")
    wer = 100.0 * sum(totals) / max(num_words, 1)
    name = f"{part}-{suffix}"
    with atomic_path(out_dir / f"recogs-{name}.txt") as tmp:
        tmp.write_text("".join(f"{c}:\tref={ref}\n{c}:\thyp={hyp}\n" for c, ref, hyp in results))
    with atomic_path(out_dir / f"errs-{name}.txt") as tmp:
        tmp.write_text(
            f"%WER = {wer:.2f}\nErrors: {totals[2]} insertions, {totals[1]} deletions, "
            f"{totals[0]} substitutions, over {num_words} reference words\n\n"
            + "\n".join(err_lines)
            + "\n"
        )
    with atomic_path(out_dir / f"wer-summary-{name}.txt") as tmp:
        tmp.write_text(f"settings\tWER\n{suffix}\t{wer:.2f}\n")
    return wer
