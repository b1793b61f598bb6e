"""Maintain the main results table of an ``egs/<corpus>/RESULTS.md``.

The table sits between ``<!-- results:begin -->`` and ``<!-- results:end -->``; one
row per trained model, keyed by its experiment folder. Rows are filled from what the
recipe measured: ``train-summary.json`` (written by the trainer) and the
``wer-summary-*`` files (written by ``decode.py``)::

    python -m mvq_kd.results --results egs/synth/RESULTS.md --exp-dir egs/synth/exp/teacher \\
        --role teacher --method baseline --suffix epoch-12-avg-3 \\
        --command "./train.py ..."
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List

from mvq_kd.utils import atomic_path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COLUMNS = [
    "role",
    "method",
    "streaming",
    "params (M)",
    "epochs",
    "train time",
    "test-clean WER",
    "test-other WER",
    "command",
    "exp",
]


def _format_seconds(s: float) -> str:
    m = int(round(s / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def read_wer(exp_dir: Path, method: str, part: str, suffix: str) -> float:
    """WER (%) from ``<exp_dir>/<method>/wer-summary-<part>-<suffix>.txt``."""
    path = exp_dir / method / f"wer-summary-{part}-{suffix}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"No {path}: run decode.py first")
    return float(path.read_text().splitlines()[1].split("\t")[1])


def make_row(
    exp_dir: Path, role: str, method: str, decoding: str, suffix: str, command: str
) -> Dict[str, str]:
    summary_path = exp_dir / "train-summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"No {summary_path}: training did not finish")
    summary = json.loads(summary_path.read_text())
    # "baseline" or a qualified one ("baseline (seed 43)"); every other method distils.
    is_baseline = method == "baseline" or method.startswith("baseline (")
    if "distillation" in summary and (summary["distillation"] is None) != is_baseline:
        raise ValueError(
            f"{exp_dir} was trained {'without' if summary['distillation'] is None else 'with'} "
            f"distillation ({summary['distillation']}) but the row says method {method!r}"
        )
    ckpt_cfg = _model_config(exp_dir, summary["epochs"])
    return {
        "role": role,
        "method": method,
        "streaming": "yes" if ckpt_cfg["encoder"]["causal"] else "no",
        "params (M)": f"{summary['params'] / 1e6:.2f}",
        "epochs": str(summary["epochs"]),
        "train time": _format_seconds(summary["train_seconds"]),
        "test-clean WER": f"{read_wer(exp_dir, decoding, 'test-clean', suffix):.2f}",
        "test-other WER": f"{read_wer(exp_dir, decoding, 'test-other', suffix):.2f}",
        "command": f"`{command}`",
        "exp": f"`{exp_dir.name}`",
    }


def _model_config(exp_dir: Path, epoch: int) -> Dict:
    import torch

    ckpt = torch.load(exp_dir / f"epoch-{epoch}.pt", map_location="cpu", weights_only=False)
    return ckpt["model_config"]


def _parse_table(lines: List[str]) -> List[Dict[str, str]]:
    rows = []
    for line in lines[2:]:  # header and separator first
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == len(COLUMNS):
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


def update_table(results_md: Path, row: Dict[str, str]) -> None:
    """Add ``row`` to the end of the table, or replace the row of the same experiment in
    its place. Replacing a row with another training command (an ``--exp-suffix`` that
    names an earlier experiment) is logged as a warning naming both commands."""
    text = results_md.read_text() if results_md.is_file() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ValueError(f"{results_md} has no '{BEGIN}' ... '{END}' table block")
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    rows = _parse_table(block.strip().splitlines())
    same = [i for i, r in enumerate(rows) if r["exp"] == row["exp"]]
    for i in same:
        if rows[i]["command"] != row["command"]:
            logging.warning(
                f"{results_md}: replacing the row of {row['exp']}, trained by another "
                f"command: {rows[i]['command']} (now {row['command']}); give the new run "
                "another experiment folder to keep both"
            )
    if same:
        rows[same[0]] = row
        rows = [r for i, r in enumerate(rows) if i not in same[1:]]
    else:
        rows.append(row)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    with atomic_path(results_md) as tmp:
        tmp.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", type=Path, required=True, help="RESULTS.md to update")
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--role", required=True, choices=["teacher", "student"])
    p.add_argument("--method", required=True, help="baseline, mvq-kd, layer-kd, ...")
    p.add_argument("--decoding-method", default="greedy_search")
    p.add_argument("--suffix", required=True, help="wer-summary suffix, e.g. epoch-12-avg-3")
    p.add_argument("--command", required=True, help="the training command, for the table")
    args = p.parse_args(argv)
    row = make_row(
        args.exp_dir, args.role, args.method, args.decoding_method, args.suffix, args.command
    )
    update_table(args.results, row)
    print(" | ".join(row[c] for c in COLUMNS[:8]))


if __name__ == "__main__":
    main()
