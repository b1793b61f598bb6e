"""Transcribe audio with the ONNX graphs of :mod:`mvq_kd.export` and onnxruntime alone.

No model code is needed at run time: the settings come from the graphs' metadata.
Features are lhotse's ``Fbank`` (the training features). A streaming model is fed
chunk by chunk as a live stream would be (``4 c + 3`` frames, advancing by ``4 c``),
and the search advances over each chunk's frames as it arrives; a non-streaming model
encodes the whole utterance. Greedy search emits at most one symbol per frame and
modified beam search keeps ``beam`` hypotheses, as :mod:`mvq_kd.decoding` does.

Example::

    model = OnnxTransducer("exp/onnx", int8=True)
    text = model.transcribe_file("hello.wav")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from mvq_kd.fields import SAMPLE_RATE
from mvq_kd.utils import Pathlike


def load_fbank(path: Pathlike, num_mel_bins: int = 80) -> np.ndarray:
    """(T, F) float32 log-mel fbank of a mono audio file at any sampling rate (resampled
    to 16 kHz), computed as in training (lhotse ``Fbank``)."""
    from lhotse import Fbank, FbankConfig, Recording

    rec = Recording.from_file(path)
    if rec.num_channels != 1:
        raise ValueError(f"{path} has {rec.num_channels} channels: the model takes mono audio")
    if rec.sampling_rate != SAMPLE_RATE:
        rec = rec.resample(SAMPLE_RATE)
    audio = rec.load_audio()  # (1, S)
    extractor = Fbank(FbankConfig(num_mel_bins=num_mel_bins))
    return extractor.extract(audio, SAMPLE_RATE).astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class OnnxTransducer:
    """The three graphs in onnxruntime sessions, with greedy and modified beam search.

    Args:
        model_dir: folder of ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and
            ``tokens.txt`` (what ``export.py`` writes).
        int8: use the ``*.int8.onnx`` graphs.
        num_threads: intra-op threads of each session.
    """

    def __init__(self, model_dir: Pathlike, int8: bool = False, num_threads: int = 1) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        suffix = ".int8.onnx" if int8 else ".onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3

        def session(name: str):
            path = model_dir / f"{name}{suffix}"
            if not path.is_file():
                hint = " (export with --int8 true)" if int8 else ""
                raise FileNotFoundError(f"No {path}: run export.py first{hint}")
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        self.encoder, self.decoder, self.joiner = (
            session(n) for n in ("encoder", "decoder", "joiner")
        )
        meta = self.encoder.get_modelmeta().custom_metadata_map
        self.meta = meta
        self.streaming = meta["streaming"] == "1"
        self.blank_id = int(meta["blank_id"])
        self.context_size = int(meta["context_size"])
        self.num_mel_bins = int(meta["num_mel_bins"])
        if self.streaming:
            self.chunk_size = int(meta["chunk_size"])
            self.chunk_frames = int(meta["chunk_frames"])
            self.chunk_shift = int(meta["chunk_shift"])
        self.tokens: Dict[int, str] = {}
        for line in (model_dir / "tokens.txt").read_text().splitlines():
            piece, idx = line.rsplit(" ", 1)
            self.tokens[int(idx)] = piece

    # ---------------------------------------------------------------- graphs

    def _decode(self, contexts: List[Tuple[int, ...]]) -> np.ndarray:
        y = np.array(contexts, dtype=np.int64).reshape(len(contexts), self.context_size)
        return self.decoder.run(None, {"y": y})[0]  # (N, J)

    def _join(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.joiner.run(None, {"encoder_out": enc, "decoder_out": dec})[0]  # (N, V)

    def encoder_chunks(self, feats: np.ndarray):
        """Yield (n, J) encoder frames of (T, F) features: the whole utterance at once,
        or chunk by chunk for a streaming model (as a live stream would feed them)."""
        if not self.streaming:
            out, lens = self.encoder.run(
                None, {"x": feats[None], "x_lens": np.array([len(feats)], dtype=np.int64)}
            )
            yield out[0, : lens[0]]
            return
        total = max(((len(feats) - 1) // 2 - 1) // 2, 0)
        inputs = {i.name: i for i in self.encoder.get_inputs()}
        state = {
            name: np.zeros(
                [1 if isinstance(d, str) else d for d in inputs[name].shape], dtype=np.float32
            )
            for name in ("cached_key", "cached_value", "cached_conv")
        }
        state["processed"] = np.zeros(1, dtype=np.int64)
        done, start = 0, 0
        while done < total:
            chunk = feats[start : start + self.chunk_frames]
            if len(chunk) < self.chunk_frames:  # the end of the stream: zero padding, masked
                chunk = np.pad(chunk, ((0, self.chunk_frames - len(chunk)), (0, 0)))
            valid = min(self.chunk_size, total - done)
            out, key, value, conv, processed = self.encoder.run(
                None, {"x": chunk[None], **state, "valid": np.array([valid], dtype=np.int64)}
            )
            state = {"cached_key": key, "cached_value": value, "cached_conv": conv,
                     "processed": processed}  # fmt: skip
            yield out[0, :valid]
            done += valid
            start += self.chunk_shift

    # ---------------------------------------------------------------- searches

    def greedy_search(self, feats: np.ndarray) -> List[int]:
        """Token ids of the greedy search (at most one symbol per frame)."""
        hyp = [self.blank_id] * self.context_size
        dec = self._decode([tuple(hyp)])
        for frames in self.encoder_chunks(feats):
            for t in range(len(frames)):
                token = int(self._join(frames[t : t + 1], dec).argmax())
                if token != self.blank_id:
                    hyp.append(token)
                    dec = self._decode([tuple(hyp[-self.context_size :])])
        return hyp[self.context_size :]

    def modified_beam_search(self, feats: np.ndarray, beam: int = 4) -> List[int]:
        """Token ids of the best hypothesis of modified beam search."""
        ctx, blank = self.context_size, self.blank_id
        hyps: Dict[Tuple[int, ...], float] = {(blank,) * ctx: 0.0}
        for frames in self.encoder_chunks(feats):
            for t in range(len(frames)):
                items = list(hyps.items())
                dec = self._decode([ys[-ctx:] for ys, _ in items])
                enc = np.repeat(frames[t : t + 1], len(items), axis=0)
                scores = _log_softmax(self._join(enc, dec).astype(np.float64))
                scores += np.array([s for _, s in items])[:, None]
                flat = scores.reshape(-1)
                k = min(beam, flat.size)
                top = np.argpartition(-flat, k - 1)[:k]
                top = top[np.argsort(-flat[top], kind="stable")]
                merged: Dict[Tuple[int, ...], float] = {}
                for i in top:
                    h, token = divmod(int(i), scores.shape[1])
                    ys = items[h][0] + ((token,) if token != blank else ())
                    s = float(flat[i])
                    if ys in merged:
                        hi, lo = max(merged[ys], s), min(merged[ys], s)
                        s = hi + math.log1p(math.exp(lo - hi))
                    merged[ys] = s
                hyps = merged
        best = max(hyps.items(), key=lambda p: p[1])[0]
        return list(best[ctx:])

    # ---------------------------------------------------------------- text

    def text(self, token_ids: List[int]) -> str:
        """Words of BPE token ids (sentencepiece pieces, ``▁`` starting a word)."""
        return " ".join("".join(self.tokens[i] for i in token_ids).replace("\u2581", " ").split())

    def transcribe_file(self, path: Pathlike, method: str = "greedy_search", beam: int = 4) -> str:
        feats = load_fbank(path, self.num_mel_bins)
        if method == "greedy_search":
            ids = self.greedy_search(feats)
        elif method == "modified_beam_search":
            ids = self.modified_beam_search(feats, beam)
        else:
            raise ValueError(f"Unknown decoding method {method!r}")
        return self.text(ids)
