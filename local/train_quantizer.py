#!/usr/bin/env python3
"""Train the multi-codebook quantizer on sampled teacher embeddings.

    local/train_quantizer.py --embeddings data/synth/mvq/embeddings.pt \
        --num-codebooks 8 --output data/synth/mvq/quantizer.pt

10% of the frames are held out and their relative reconstruction error is logged.
Skipped when the output exists.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mvq_kd.quantization import QuantizerConfig, train_quantizer  # noqa: E402
from mvq_kd.trainer import pick_device  # noqa: E402
from mvq_kd.utils import setup_logging  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--embeddings", type=Path, required=True, help="from extract_teacher_embeddings.py"
    )
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num-codebooks", type=int, default=8, help="bytes per teacher frame")
    p.add_argument("--train-iters", type=int, default=QuantizerConfig.train_iters)
    p.add_argument("--refine-iters", type=int, default=QuantizerConfig.refine_iters)
    p.add_argument("--beam", type=int, default=QuantizerConfig.beam)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
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
    cfg = QuantizerConfig(
        train_iters=args.train_iters, refine_iters=args.refine_iters, beam=args.beam, seed=args.seed
    )
    q = train_quantizer(x[n_valid:], args.num_codebooks, cfg, valid=x[:n_valid])
    q.cpu().save(args.output)
    logging.info(
        f"Saved quantizer {q.id} to {args.output} "
        f"(held-out relative error {q.relative_error(x[:n_valid].cpu()):.4f})"
    )


if __name__ == "__main__":
    main()
