"""Benchmark: real-time factor of a student at inference, PyTorch and ONNX (fp32, int8).

RTF = processing time / audio duration, on ``--threads`` CPU threads (default 1), for
greedy search on precomputed fbank features: a streaming model chunk by chunk (PyTorch:
``streaming_greedy_search``; ONNX: ``onnx_pretrained.py``'s loop), a non-streaming one on
whole utterances. The fbank extraction's own RTF is a separate column (lhotse ``Fbank``
on the same audio). Also: model size on disk (the three ONNX graphs) and the streaming
latency (one chunk plus the subsampling's right context of 3 fbank frames).

Models: a trained ``train.py`` experiment (``--exp-dir``, ``--epoch``, ``--avg``), or a
size with random weights (``--size synth-streaming``: the synth recipe's 4 x 128
streaming student; ``librispeech-streaming``: the 16 x 256 streaming student of
``egs/librispeech``, vocabulary 500); random weights time the same work as trained ones
except for how often the decoder runs (once per emitted token).

``--wer-parts test-clean test-other`` also decodes those parts of ``--manifest-dir``
with the ONNX graphs in fp32 and int8 and prints both WERs (a trained model).

Usage::

    python benchmarks/bench_rtf.py --size librispeech-streaming
    python benchmarks/bench_rtf.py --exp-dir egs/synth/exp/student-mvq-kd --epoch 10 --avg 3 \
        --bpe-model data/synth/lang_bpe_64/bpe.model --wer-parts test-clean test-other
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.checkpoint import load_model  # noqa: E402
from mvq_kd.decoding import greedy_search_batch, streaming_greedy_search  # noqa: E402
from mvq_kd.export import export_onnx  # noqa: E402
from mvq_kd.model.encoder import ENCODER_FRAME_SHIFT, EncoderConfig  # noqa: E402
from mvq_kd.model.transducer import Transducer, TransducerConfig  # noqa: E402
from mvq_kd.onnx_infer import OnnxTransducer  # noqa: E402

SIZES = {
    "synth-streaming": dict(
        enc=dict(num_layers=4, d_model=128, num_heads=4, ffn_dim=512, causal=True,
                 chunk_size=4, left_context=16),
        vocab_size=64, decoder_dim=256, joiner_dim=256,
    ),
    "librispeech-streaming": dict(
        enc=dict(num_layers=16, d_model=256, num_heads=4, ffn_dim=1024, causal=True,
                 chunk_size=4, left_context=16),
        vocab_size=500, decoder_dim=512, joiner_dim=512,
    ),
}  # fmt: skip


def random_model(size: str) -> Transducer:
    spec = SIZES[size]
    torch.manual_seed(0)
    config = TransducerConfig(
        EncoderConfig(**spec["enc"]),
        vocab_size=spec["vocab_size"],
        decoder_dim=spec["decoder_dim"],
        joiner_dim=spec["joiner_dim"],
    )
    return Transducer(config).eval()


def load_inputs(manifest: Path, num_utts: int):
    """(features, audio, duration) of the first cuts of ``manifest``, or random speech-
    like features of 8 s when it does not exist."""
    if manifest.is_file():
        from lhotse import load_manifest_lazy

        out = []
        for cut in load_manifest_lazy(manifest):
            out.append((cut.load_features(), cut.load_audio(), cut.duration))
            if len(out) == num_utts:
                break
        return out
    rng = np.random.default_rng(0)
    return [(rng.normal(-8, 3, (800, 80)).astype(np.float32), None, 8.0) for _ in range(num_utts)]


def time_rtf(fn, inputs) -> float:
    fn(inputs[0][0])  # warm-up
    start = time.perf_counter()
    for feats, _, _ in inputs:
        fn(feats)
    return (time.perf_counter() - start) / sum(d for _, _, d in inputs)


def onnx_wer(onnx: OnnxTransducer, manifest_dir: Path, prefix: str, part: str) -> float:
    from lhotse import load_manifest_lazy

    from mvq_kd.evaluate import word_errors

    errors = words = 0
    for cut in load_manifest_lazy(manifest_dir / f"{prefix}_cuts_{part}.jsonl.gz"):
        hyp = onnx.text(onnx.greedy_search(cut.load_features())).split()
        ref = cut.supervisions[0].text.split()
        errors += sum(word_errors(ref, hyp))
        words += len(ref)
    return 100.0 * errors / words


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", choices=sorted(SIZES), default="synth-streaming", help="random-weight model"
    )
    p.add_argument("--exp-dir", type=Path, help="a trained experiment instead of --size")
    p.add_argument("--epoch", type=int, default=10)
    p.add_argument("--avg", type=int, default=3)
    p.add_argument("--bpe-model", type=Path, help="tokens of a trained model (else placeholders)")
    p.add_argument("--manifest-dir", type=Path, default=Path("data/synth/fbank"))
    p.add_argument("--prefix", default="synth")
    p.add_argument("--part", default="test-clean", help="utterances timed")
    p.add_argument("--num-utts", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wer-parts", nargs="*", default=[], help="parts decoded for ONNX WERs")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.exp_dir:
        model, _ = load_model(args.exp_dir, args.epoch, args.avg, torch.device("cpu"))
        name = f"{args.exp_dir.name} (epoch {args.epoch}, avg {args.avg})"
    else:
        model, name = random_model(args.size), f"{args.size} (random weights)"
    cfg = model.encoder.config
    vocab = model.joiner.output_linear.out_features
    if args.bpe_model:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(args.bpe_model))
        tokens = {i: sp.id_to_piece(i) for i in range(sp.vocab_size())}
    else:
        tokens = {i: f"t{i}" for i in range(vocab)}
    inputs = load_inputs(
        args.manifest_dir / f"{args.prefix}_cuts_{args.part}.jsonl.gz", args.num_utts
    )

    def torch_search(feats):
        x, x_lens = torch.from_numpy(feats)[None], torch.tensor([len(feats)])
        with torch.no_grad():
            if cfg.causal:
                return streaming_greedy_search(model, x, x_lens)
            enc = model.encoder(x, x_lens)
            return greedy_search_batch(model, enc.out, enc.out_lens)

    rows = {"PyTorch fp32": time_rtf(torch_search, inputs)}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_onnx(model, tmp, tokens, int8=True)
        size = {
            kind: sum(
                files[f"{n}{suffix}"].stat().st_size for n in ("encoder", "decoder", "joiner")
            )
            for kind, suffix in (("fp32", ""), ("int8", ".int8"))
        }
        for kind in ("fp32", "int8"):
            onnx = OnnxTransducer(tmp, int8=kind == "int8", num_threads=args.threads)
            rows[f"ONNX {kind}"] = time_rtf(onnx.greedy_search, inputs)
            if args.wer_parts:
                for part in args.wer_parts:
                    wer = onnx_wer(onnx, args.manifest_dir, args.prefix, part)
                    print(f"WER ONNX {kind} {part}: {wer:.2f}")
    if inputs[0][1] is not None:
        from lhotse import Fbank, FbankConfig

        fbank = Fbank(FbankConfig(num_mel_bins=80))
        fbank.extract(inputs[0][1], 16000)  # warm-up
        start = time.perf_counter()
        for _, audio, _ in inputs:
            fbank.extract(audio, 16000)
        rows["fbank extraction"] = (time.perf_counter() - start) / sum(d for *_, d in inputs)

    params = sum(p.numel() for p in model.parameters()) / 1e6
    audio = sum(d for *_, d in inputs)
    latency = ""
    if cfg.causal:
        latency = f"{cfg.chunk_size * ENCODER_FRAME_SHIFT * 1000 + 30:.0f} ms"
    print(
        f"\n{name}: {params:.2f} M parameters, {len(inputs)} utterances, {audio:.1f} s of "
        f"audio, {args.threads} thread(s); streaming latency (chunk + right context): "
        f"{latency or 'n/a'}"
    )
    print(
        f"ONNX size on disk: fp32 {size['fp32'] / 1e6:.2f} MB, int8 {size['int8'] / 1e6:.2f} MB\n"
    )
    print("| runtime | RTF |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.4f} |")


if __name__ == "__main__":
    main()
