#!/usr/bin/env python3
"""Train the multi-codebook quantizer on sampled teacher embeddings.

    local/train_quantizer.py --embeddings data/synth/mvq/embeddings.pt \
        --num-codebooks 8 --output data/synth/mvq/quantizer.pt

10% of the frames are held out and their relative reconstruction error is logged at
the end; of the rest, ``--stop-fraction`` are held out to decide when training stops
(their error is logged every round; see ``mvq_kd.quantization.QuantizerConfig``).
Skipped when the output exists.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mvq_kd.cli import add_config_args, config_from_args, make_parser  # noqa: E402
from mvq_kd.device import pick_device  # noqa: E402
from mvq_kd.quantization import QuantizerConfig, train_quantizer  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument(
        "--embeddings", type=Path, required=True, help="from extract_teacher_embeddings.py"
    )
    p.add_argument("--output", type=Path, required=True, help="the quantizer file (.pt)")
    p.add_argument("--device", default="auto", help="auto: the GPU if there is one, else the CPU")
    add_config_args(p, QuantizerConfig, "quantizer")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    if args.output.is_file():
        logging.info(f"{args.output} exists, skipping")
        return
    x = torch.load(args.embeddings, weights_only=False)["embeddings"].float()
    x = x[torch.randperm(x.size(0), generator=torch.Generator().manual_seed(args.seed))]
    n_valid = max(1, x.size(0) // 10)
    x = x.to(pick_device(args.device))
    logging.info(
        f"Training a {args.num_codebooks}-byte quantizer on {x.size(0) - n_valid} "
        f"frames of dim {x.size(1)} ({n_valid} held out)"
    )
    cfg = config_from_args(QuantizerConfig, args)
    q = train_quantizer(x[n_valid:], cfg.num_codebooks, cfg)
    q.cpu().save(args.output)
    logging.info(
        f"Saved quantizer {q.id} to {args.output} "
        f"(held-out relative error {q.relative_error(x[:n_valid].cpu()):.4f})"
    )


if __name__ == "__main__":
    main()
