#!/usr/bin/env python3
r"""Transcribe audio files with an exported model and onnxruntime (no model code needed).

    ./onnx_pretrained.py --model-dir egs/synth/exp/student-mvq-kd/onnx a.wav b.flac
    ./onnx_pretrained.py --model-dir exp/onnx --int8 true \
        --decoding-method modified_beam_search x.wav

Prints one line per file, "FILE: TEXT". Audio of any sampling rate is resampled to
16 kHz (mono only). A streaming model is fed chunk by chunk, as a live stream would be.
"""

import argparse
import sys
from pathlib import Path

from mvq_kd.cli import make_parser, str2bool


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="folder written by export.py")
    p.add_argument("--int8", type=str2bool, default=False, help="use the *.int8.onnx graphs")
    p.add_argument(
        "--decoding-method",
        default="greedy_search",
        choices=("greedy_search", "modified_beam_search"),
        help="search of the hypotheses",
    )
    p.add_argument("--beam-size", type=int, default=4, help="beam of modified beam search")
    p.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads")
    p.add_argument("files", type=Path, nargs="+", help="audio files (WAV, FLAC, ...)")
    return p


def main(argv=None) -> None:
    from mvq_kd.onnx_infer import OnnxTransducer

    args = get_parser().parse_args(argv)
    model = OnnxTransducer(args.model_dir, int8=args.int8, num_threads=args.num_threads)
    for path in args.files:
        if not path.is_file():
            sys.exit(f"onnx_pretrained.py: no such audio file: {path}")
        text = model.transcribe_file(path, args.decoding_method, args.beam_size)
        print(f"{path}: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
