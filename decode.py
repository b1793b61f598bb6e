#!/usr/bin/env python3
r"""Decode test sets with a trained transducer (averaged epoch checkpoints).

    ./decode.py --exp-dir egs/synth/exp/teacher --epoch 10 --avg 3 \
        --bpe-model data/synth/lang_bpe_64/bpe.model --decoding-method modified_beam_search

Streaming (causal) models decode with a chunked attention mask by default
(--streaming simulated), or truly chunk by chunk with cached state
(--streaming chunked). Results: <exp-dir>/<method>/recogs-*, errs-*, wer-summary-*.
"""

import argparse
import logging
import sys
from pathlib import Path

from mvq_kd.checkpoint import load_model
from mvq_kd.cli import add_config_args, config_from_args, make_parser
from mvq_kd.dataset import add_manifest_args, load_cuts
from mvq_kd.device import pick_device
from mvq_kd.evaluate import DecodeOptions, decode_cuts, decode_suffix, write_results
from mvq_kd.fields import cuts_path
from mvq_kd.utils import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    m = p.add_argument_group("model")
    m.add_argument("--exp-dir", type=Path, required=True, help="the train.py experiment folder")
    m.add_argument("--epoch", type=int, required=True, help="last epoch checkpoint to use")
    m.add_argument("--avg", type=int, default=1, help="number of epoch checkpoints averaged")
    m.add_argument("--bpe-model", type=Path, required=True, help="the model's BPE model")
    m.add_argument("--device", default="auto", help="auto: the GPU if there is one, else the CPU")
    d = p.add_argument_group("test sets: <manifest-dir>/<prefix>_cuts_<part>.jsonl.gz")
    add_manifest_args(d)
    d.add_argument(
        "--test-parts", nargs="+", default=["test-clean", "test-other"], help="parts decoded"
    )
    d.add_argument("--max-duration", type=float, default=300.0, help="seconds of audio per batch")
    add_config_args(p, DecodeOptions, "search")
    return p


def main(argv=None) -> None:
    import sentencepiece as spm

    args = get_parser().parse_args(argv)
    setup_logging()
    device = pick_device(args.device)
    opts = config_from_args(DecodeOptions, args)
    model, paths = load_model(args.exp_dir, args.epoch, args.avg, device)
    logging.info(f"Averaged {[p.name for p in paths]}: {model.num_params() / 1e6:.2f} M params")
    sp = spm.SentencePieceProcessor(model_file=str(args.bpe_model))
    cfg = model.encoder.config
    suffix = decode_suffix(
        args.epoch,
        args.avg,
        method=args.decoding_method,
        beam_size=args.beam_size,
        streaming=args.streaming if cfg.causal else None,
        chunk=cfg.chunk_size if args.chunk_size is None else args.chunk_size,
        left=cfg.left_context if args.left_context is None else args.left_context,
    )
    out_dir = args.exp_dir / args.decoding_method
    for part in args.test_parts:
        cuts = load_cuts([cuts_path(args.manifest_dir, args.prefix, part)])
        results = decode_cuts(model, sp, cuts, opts, device, args.max_duration)
        wer = write_results(out_dir, part, suffix, results)
        logging.info(f"{part} {suffix}: WER {wer:.2f}% ({len(results)} cuts) -> {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
