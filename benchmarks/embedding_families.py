"""Embedding families for the quantizer benchmark (``bench_quantizer.py``).

Each family is a file ``<out-dir>/<name>.pt`` holding ``{"train": (F, D) float32,
"valid": (F', D) float32, "about": str}``; the held-out frames are never training
frames (other utterances, other speakers, or fresh draws). Families:

* ``synth-teacher-l2``, ``synth-teacher-l4``: layers 2 and 4 of a trained
  ``egs/synth`` teacher (``--teacher-exp-dir``), dim 192; training frames from
  ``train`` cuts, held-out frames from ``dev`` cuts (other speakers).
* ``hubert-768``, ``hubert-1280``: HuBERT-shaped Transformers (``transformers``
  ``HubertConfig``, random weights: base-like post-norm at 768 dims, XL-like pre-norm
  with layer-normalised conv front-end at 1,280), output of layer 3 of 4, on the synthetic
  corpus's speech (training from ``train``, held-out from ``dev`` recordings).
* constructed, dim 128, fresh draws for the held-out frames:
  ``anisotropic`` (Gaussian, eigenvalues falling as ``1 / i`` in a random basis, a mean
  offset), ``heavy-tailed`` (Student-t with 2.5 degrees of freedom per latent axis,
  random basis, unequal scales), ``lowrank-nonlinear`` (a random 2-layer tanh network of
  an 8-dim Gaussian, plus isotropic noise at 10% of the energy).

Usage::

    python benchmarks/embedding_families.py --out-dir /tmp/families \\
        --manifest-dir data/synth/fbank --teacher-exp-dir egs/synth/exp/teacher \\
        --teacher-epoch 8 --teacher-avg 3
    python benchmarks/embedding_families.py --out-dir /tmp/families \\
        --families anisotropic heavy-tailed lowrank-nonlinear   # no data needed
"""

import argparse
import logging
import math
import random
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvq_kd.utils import atomic_path  # noqa: E402

CONSTRUCTED_DIM = 128
FAMILIES = (
    "synth-teacher-l2",
    "synth-teacher-l4",
    "hubert-768",
    "hubert-1280",
    "anisotropic",
    "heavy-tailed",
    "lowrank-nonlinear",
)


def _basis(d: int, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    return q


def anisotropic(n: int, gen: torch.Generator, params: Dict) -> Tensor:
    d = CONSTRUCTED_DIM
    scale = (1.0 / torch.arange(1, d + 1, dtype=torch.float32)).sqrt()
    return (torch.randn(n, d, generator=gen) * scale) @ params["basis"] + params["mean"]


def heavy_tailed(n: int, gen: torch.Generator, params: Dict) -> Tensor:
    d, nu = CONSTRUCTED_DIM, 2.5
    z = torch.randn(n, d, generator=gen)
    chi2 = 2.0 * torch._standard_gamma(torch.full((n, d), nu / 2.0))  # per-axis Student-t
    t = z / (chi2 / nu).sqrt()
    return (t * params["scales"]) @ params["basis"]


def lowrank_nonlinear(n: int, gen: torch.Generator, params: Dict) -> Tensor:
    z = torch.randn(n, 8, generator=gen)
    h = torch.tanh(z @ params["w1"])
    x = torch.tanh(h @ params["w2"])
    noise = torch.randn(n, CONSTRUCTED_DIM, generator=gen)
    return x + noise * params["noise_std"]


def constructed(name: str, n_train: int, n_valid: int, seed: int) -> Tuple[Tensor, Tensor, str]:
    gen = torch.Generator().manual_seed(seed)
    d = CONSTRUCTED_DIM
    params = {"basis": _basis(d, gen), "mean": torch.randn(d, generator=gen)}
    fn: Callable[[int, torch.Generator, Dict], Tensor]
    if name == "anisotropic":
        fn, about = anisotropic, "Gaussian, eigenvalues 1/i in a random basis, mean offset"
    elif name == "heavy-tailed":
        params["scales"] = torch.rand(d, generator=gen) * 1.5 + 0.25
        fn, about = heavy_tailed, "Student-t (2.5 dof) per latent axis, random basis and scales"
    elif name == "lowrank-nonlinear":
        params["w1"] = torch.randn(8, 64, generator=gen)
        params["w2"] = torch.randn(64, d, generator=gen) / math.sqrt(64) * 2.0
        signal = lowrank_nonlinear(4096, gen, {**params, "noise_std": 0.0})
        params["noise_std"] = math.sqrt(0.1 / 0.9 * float(signal.var(0).sum()) / d)
        fn, about = lowrank_nonlinear, "tanh network of 8-dim Gaussian + 10% isotropic noise"
    else:
        raise ValueError(name)
    return fn(n_train, gen, params), fn(n_valid, gen, params), about


def _frames_of(teacher, cuts, n_frames: int) -> Tensor:
    """Up to ``n_frames`` embedding frames of ``cuts`` (in manifest order), (F, D)."""
    from mvq_kd.codebooks import teacher_batches

    chunks, total = [], 0
    for _, x, x_lens in teacher_batches(teacher, cuts, max_duration=60.0):
        out = teacher.embed(x, x_lens)
        for i in range(x.size(0)):
            chunks.append(out.embeddings[i, : int(out.lens[i])].float())
            total += int(out.lens[i])
        logging.info(f"  {total} / {n_frames} frames")
        if total >= n_frames:
            break
    if total < n_frames:
        raise ValueError(f"only {total} frames in the cuts, {n_frames} wanted")
    return torch.cat(chunks)[:n_frames]


def _hubert(dim: int, seed: int):
    from transformers import HubertConfig, HubertModel

    from mvq_kd.teacher import HfSslTeacher

    torch.manual_seed(seed)
    if dim == 768:  # HuBERT base: post-norm, group-norm front-end
        cfg = HubertConfig(hidden_size=768, num_hidden_layers=4, num_attention_heads=12,
                           intermediate_size=3072)  # fmt: skip
    else:  # HuBERT large/XL: pre-norm ("stable layer norm"), layer-norm front-end
        cfg = HubertConfig(hidden_size=dim, num_hidden_layers=4, num_attention_heads=16,
                           intermediate_size=4 * dim, do_stable_layer_norm=True,
                           feat_extract_norm="layer", conv_bias=True)  # fmt: skip
    model = HubertModel(cfg).eval()
    return HfSslTeacher(model, layer=3, normalize=dim != 768)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--train-frames", type=int, default=60000, help="training frames per family")
    p.add_argument("--valid-frames", type=int, default=6000, help="held-out frames per family")
    p.add_argument("--manifest-dir", type=Path, default=Path("data/synth/fbank"))
    p.add_argument("--teacher-exp-dir", type=Path, default=Path("egs/synth/exp/teacher"))
    p.add_argument("--teacher-epoch", type=int, default=8)
    p.add_argument("--teacher-avg", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.families:
        path = args.out_dir / f"{name}.pt"
        if path.is_file():
            logging.info(f"{path} exists, skipping")
            continue
        logging.info(f"family {name}")
        with torch.no_grad():
            if name.startswith(("synth-teacher", "hubert")):
                from mvq_kd.dataset import load_cuts

                rng = random.Random(args.seed)  # utterances of many speakers, not the first
                train_cuts = load_cuts([args.manifest_dir / "synth_cuts_train.jsonl.gz"])
                train_cuts = train_cuts.to_eager().shuffle(rng)
                valid_cuts = load_cuts([args.manifest_dir / "synth_cuts_dev.jsonl.gz"])
                valid_cuts = valid_cuts.to_eager().shuffle(rng)
                if name.startswith("synth-teacher"):
                    from mvq_kd.teacher import ConformerTeacher

                    layer = int(name[-1])
                    teacher = ConformerTeacher.from_checkpoint(
                        args.teacher_exp_dir, args.teacher_epoch, args.teacher_avg, layer
                    ).eval()
                    about = f"{args.teacher_exp_dir} layer {layer} (train / dev cuts)"
                else:
                    teacher = _hubert(int(name.split("-")[1]), args.seed)
                    about = "random-weight HuBERT-shaped Transformer, layer 3 of 4 (train / dev)"
                train = _frames_of(teacher, train_cuts, args.train_frames)
                valid = _frames_of(teacher, valid_cuts, args.valid_frames)
            else:
                train, valid, about = constructed(
                    name, args.train_frames, args.valid_frames, args.seed
                )
        with atomic_path(path) as tmp:
            torch.save({"train": train, "valid": valid, "about": about}, tmp)
        logging.info(f"wrote {path}: train {tuple(train.shape)}, held-out {tuple(valid.shape)}")


if __name__ == "__main__":
    main()
