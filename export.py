#!/usr/bin/env python3
r"""Export a trained transducer (averaged epoch checkpoints) to ONNX for deployment.

    ./export.py --exp-dir egs/synth/exp/student-mvq-kd --epoch 10 --avg 3 \
        --bpe-model data/synth/lang_bpe_64/bpe.model --int8 true

Writes <exp-dir>/onnx/encoder.onnx, decoder.onnx, joiner.onnx (and *.int8.onnx with
--int8 true), tokens.txt and config.json. A streaming model's encoder processes one chunk
of --chunk-size encoder frames (4 x chunk + 3 fbank frames) with its caches as explicit
inputs and outputs; a non-streaming model's encoder takes whole utterances of any length.
Transcribe files with ./onnx_pretrained.py --model-dir <exp-dir>/onnx FILE...
"""

import argparse
import logging
import sys
from pathlib import Path

from mvq_kd.checkpoint import load_model
from mvq_kd.cli import make_parser, str2bool
from mvq_kd.utils import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--exp-dir", type=Path, required=True, help="the train.py experiment folder")
    p.add_argument("--epoch", type=int, required=True, help="last epoch checkpoint to use")
    p.add_argument("--avg", type=int, default=1, help="number of epoch checkpoints averaged")
    p.add_argument("--bpe-model", type=Path, required=True, help="the model's BPE model")
    p.add_argument("--out-dir", type=Path, default=None, help="default: <exp-dir>/onnx")
    p.add_argument("--int8", type=str2bool, default=False, help="also write *.int8.onnx")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=-1,
        help="streaming: encoder frames per chunk (-1: the model's)",
    )
    p.add_argument(
        "--left-context",
        type=int,
        default=-1,
        help="streaming: cached encoder frames (-1: the model's)",
    )
    return p


def main(argv=None) -> None:
    import sentencepiece as spm

    from mvq_kd.export import export_onnx

    args = get_parser().parse_args(argv)
    setup_logging()
    model, paths = load_model(args.exp_dir, args.epoch, args.avg, "cpu")
    logging.info(f"Averaged {[p.name for p in paths]}: {model.num_params() / 1e6:.2f} M params")
    sp = spm.SentencePieceProcessor(model_file=str(args.bpe_model))
    tokens = {i: sp.id_to_piece(i) for i in range(sp.vocab_size())}
    out_dir = args.out_dir or args.exp_dir / "onnx"
    files = export_onnx(model, out_dir, tokens, args.chunk_size, args.left_context, args.int8)
    for name, path in files.items():
        logging.info(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
