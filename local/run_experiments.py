#!/usr/bin/env python3
"""Train, decode and tabulate the experiments of a recipe's experiment matrix.

The matrix is data (default egs/synth/experiments.yaml); egs/synth/run.sh calls this program
for its training, decoding and results stages. Examples (from the repository root):

    local/run_experiments.py --groups all --list            # the experiments and folders
    local/run_experiments.py --groups seq-kd --dry-run      # the commands it would run
    local/run_experiments.py --groups all --seeds 42 43 44 --train-jobs 2
    local/run_experiments.py --only student-l2-teacher --teacher-epochs 20 \\
        --exp-suffix=-teacher-epoch20                       # students of another checkpoint
    local/run_experiments.py --steps render                 # regenerate RESULTS.md

Seed 42 trains in <exp-dir>/<name>, seed N in <exp-dir>/<name>-seed<N>. Training skips
finished experiments and resumes interrupted ones; rows go to results.csv (a re-run replaces
its row in place) and RESULTS.md is regenerated from it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from mvq_kd import experiments as ex  # noqa: E402
from mvq_kd.cli import make_parser  # noqa: E402
from mvq_kd.utils import atomic_path  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument(
        "--recipe",
        type=Path,
        default=Path("egs/synth/experiments.yaml"),
        help="the experiment matrix (YAML; its header documents the layout)",
    )
    p.add_argument(
        "--groups",
        nargs="+",
        default=["main"],
        choices=["all", *ex.GROUPS],
        metavar="GROUP",
        help=f"groups of experiments to run: {', '.join(ex.GROUPS)} or all (every group)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NAME",
        help="run only these experiments (of any group; --groups is then ignored)",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="NAME",
        help="leave these experiments out of the selection",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[ex.DEFAULT_SEED],
        metavar="N",
        help="train every selected experiment with each seed (folder <name> for "
        f"{ex.DEFAULT_SEED}, <name>-seed<N> for the others)",
    )
    p.add_argument(
        "--exp-suffix",
        default="",
        help="appended to every student's folder name (e.g. students from another "
        "teacher checkpoint in folders of their own); write --exp-suffix=-x for a suffix "
        "that starts with a dash",
    )
    p.add_argument(
        "--exp-dir",
        default=None,
        help="folder of the experiment folders; None: the recipe's exp_dir",
    )
    p.add_argument(
        "--teacher-epochs",
        type=int,
        default=None,
        help="epochs of the teacher, and the teacher checkpoint the students learn "
        "from; None: the recipe's teacher_epochs",
    )
    p.add_argument(
        "--student-epochs",
        type=int,
        default=None,
        help="epochs of every student; None: the recipe's student_epochs",
    )
    p.add_argument(
        "--avg",
        type=int,
        default=None,
        help="epoch checkpoints averaged for decoding and for the teacher; None: the recipe's avg",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="override settings of the recipe (e.g. ground_truth_weight=0.8); give "
        "such runs their own --exp-suffix",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        default=["train", "decode", "rows"],
        choices=ex.STEPS,
        metavar="STEP",
        help="what to do: train, decode, rows (results.csv + RESULTS.md), render "
        "(RESULTS.md from results.csv only)",
    )
    p.add_argument(
        "--train-jobs",
        type=int,
        default=1,
        help="trainings at once, one thread each when more than one (2 cores: 2)",
    )
    p.add_argument(
        "--python", default=sys.executable, help="the interpreter that runs train.py and decode.py"
    )
    p.add_argument(
        "--results-csv",
        type=Path,
        default=None,
        help="the rows; None: the recipe's results csv (with --exp-dir other than the "
        "recipe's: <exp-dir>/results.csv)",
    )
    p.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help="the generated tables; None: the recipe's results markdown (with --exp-dir "
        "other than the recipe's: <exp-dir>/RESULTS.md)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the train.py / decode.py commands (one '+ ' line each) instead of running them",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="print the selected runs (folder, groups, method) and exit",
    )
    p.add_argument(
        "--print-needs",
        action="store_true",
        help="print what the selected experiments need from the teacher (mvq, "
        "nbest, mvq-nbest; one a line) and exit",
    )
    p.add_argument(
        "--print-setting",
        metavar="NAME",
        default=None,
        help="print the value of one of the recipe's settings (after the overrides) and exit",
    )
    return p


def _join_suffix(argv: List[str]) -> List[str]:
    """``--exp-suffix -x`` as ``--exp-suffix=-x``: argparse takes a value that starts with a
    dash for an option, and suffixes usually start with one."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "--exp-suffix":
            out[i : i + 2] = [f"--exp-suffix={out[i + 1]}"]
            break
    return out


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(_join_suffix(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s (run_experiments) %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")  # fmt: skip
    os.chdir(REPO)  # commands and the recipe's paths are relative to the repository root
    recipe = ex.Recipe.load(args.recipe)
    overrides = dict(s.split("=", 1) for s in args.set if "=" in s)
    if len(overrides) != len(args.set):
        sys.exit(f"--set takes NAME=VALUE, not {' '.join(args.set)}")
    for key, value in (("exp_dir", args.exp_dir), ("teacher_epochs", args.teacher_epochs),
                       ("student_epochs", args.student_epochs), ("avg", args.avg)):  # fmt: skip
        if value is not None:
            overrides[key] = value
    default_exp_dir = recipe.settings["exp_dir"]
    recipe = recipe.with_settings(overrides)
    csv_path = args.results_csv or Path(recipe.results.get("csv", "results.csv"))
    md_path = args.results_md or Path(recipe.results.get("markdown", "RESULTS.md"))
    if Path(recipe.settings["exp_dir"]) != Path(default_exp_dir):
        # Models of another experiment folder (a smoke run, a shortened recipe) never
        # replace the recipe's measured rows: their table lives beside them.
        exp_root = Path(recipe.settings["exp_dir"])
        csv_path = args.results_csv or exp_root / "results.csv"
        md_path = args.results_md or exp_root / "RESULTS.md"

    if args.print_setting is not None:
        if args.print_setting not in recipe.settings:
            sys.exit(
                f"{args.recipe}: no setting {args.print_setting} "
                f"(settings: {', '.join(recipe.settings)})"
            )
        print(recipe.settings[args.print_setting])
        return
    selected = recipe.select(args.groups, args.only, args.exclude)
    if args.print_needs:
        print("\n".join(recipe.needs(selected)))
        return
    runs = recipe.runs(selected, args.seeds, args.exp_suffix)
    if args.list:
        for run in runs:
            print(f"{run.exp_dir}\t{','.join(run.experiment.groups)}\t{run.method}")
        return
    if "train" in args.steps:
        ex.train(runs, python=args.python, jobs=args.train_jobs, dry_run=args.dry_run)
    if "decode" in args.steps:
        ex.decode(runs, python=args.python, dry_run=args.dry_run)
    if "rows" in args.steps:
        ex.write_rows(runs, csv_path, dry_run=args.dry_run)
    if ("rows" in args.steps or "render" in args.steps) and not args.dry_run:
        with atomic_path(md_path) as tmp:
            tmp.write_text(ex.render_results(args.recipe, csv_path))
        logging.info(f"{md_path}: regenerated from {csv_path}")


if __name__ == "__main__":
    main()
