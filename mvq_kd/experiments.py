"""A recipe's experiment matrix as data, and the runs made from it.

The matrix is a YAML file (``egs/synth/experiments.yaml``; its header documents the layout):
settings, named sets of ``train.py`` options and one entry per trained model. This module
loads and checks it (:class:`Recipe`), expands a selection into runs, one per experiment and
seed (:class:`Run`: its folder, ``train.py`` command and ``decode.py`` commands), and carries
out the recipe's steps over them: :func:`train` (skips finished runs, resumes interrupted ones,
several at once), :func:`decode` and :func:`write_rows` (``results.csv`` and ``RESULTS.md``,
via :mod:`mvq_kd.results`). ``local/run_experiments.py`` is its command line.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Dict, List, Mapping, Optional, Sequence, Tuple

from mvq_kd.results import (
    DEFAULT_SEED,
    FAMILIES,
    ROLES,
    TEST_PARTS,
    Row,
    add_row,
    exp_name,
    measured_row,
    read_rows,
    render,
    wer_summary_path,
)

GROUPS = ("main", "kd-baselines", "layerwise", "seq-kd", "combined")
NEEDS = ("mvq", "nbest", "mvq-nbest")
STEPS = ("train", "decode", "rows", "render")
RENDER_COMMAND = "python local/run_experiments.py --steps render"


class RecipeError(ValueError):
    """A recipe file that cannot be used as it is (the message names the file and the fix)."""


@dataclass(frozen=True)
class Experiment:
    """One entry of ``experiments``: a model to train, as declared (before seeds)."""

    name: str
    groups: Tuple[str, ...]
    role: str
    family: str
    method: str
    streaming: bool
    options: Tuple[str, ...]
    teacher: Optional[str] = None
    needs: Tuple[str, ...] = ()
    epochs: Optional[int] = None


@dataclass(frozen=True)
class Run:
    """An experiment trained with one seed: everything the steps need, resolved."""

    experiment: Experiment
    seed: int
    exp_dir: Path
    epochs: int
    avg: int
    method: str
    teacher: str
    command: str
    decode_options: str
    chunk: Optional[int] = None
    left: Optional[int] = None

    @property
    def name(self) -> str:
        return self.exp_dir.name

    def decode_modes(self) -> List[Optional[str]]:
        """``--streaming`` of each decode: simulated and chunked for a streaming model."""
        return ["simulated", "chunked"] if self.experiment.streaming else [None]

    def decode_command(self, mode: Optional[str]) -> str:
        """The ``decode.py`` command of one decoding mode."""
        cmd = (
            f"./decode.py --exp-dir {self.exp_dir} --epoch {self.epochs} --avg {self.avg} "
            f"{self.decode_options}"
        )
        return cmd + (f" --streaming {mode}" if mode else "")

    def wer_suffix(self, mode: Optional[str]) -> str:
        """The suffix of the ``wer-summary-*`` files decode.py writes for ``mode``."""
        from mvq_kd.evaluate import decode_suffix  # imports torch: only when decoding

        return decode_suffix(self.epochs, self.avg, streaming=mode, chunk=self.chunk,
                             left=self.left)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """The experiment matrix of one recipe (see the header of its YAML file)."""

    path: Path
    settings: Dict[str, str]
    common: str
    decode: str
    option_sets: Dict[str, str]
    experiments: Tuple[Experiment, ...]
    results: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Recipe":
        """Load and check a recipe file.

        Raises:
            RecipeError: a missing key, an unknown group, family, role, option set or
                teacher, a streaming flag that disagrees with the options, two experiments
                of one name (the message names the file and the experiment).
        """
        import yaml

        path = Path(path)
        data = yaml.safe_load(path.read_text())
        try:
            settings = {k: str(v) for k, v in data["settings"].items()}
            option_sets = {k: " ".join(str(v).split()) for k, v in data["option_sets"].items()}
            experiments = tuple(_experiment(e, path) for e in data["experiments"])
            recipe = cls(
                path=path,
                settings=settings,
                common=" ".join(str(data["common"]).split()),
                decode=" ".join(str(data["decode"]).split()),
                option_sets=option_sets,
                experiments=experiments,
                results={k: str(v) for k, v in data.get("results", {}).items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise RecipeError(f"{path}: missing or malformed {e} (see the file's header)") from e
        recipe._check()
        return recipe

    def _check(self) -> None:
        names = [e.name for e in self.experiments]
        for e in self.experiments:
            where = f"{self.path}: experiment {e.name!r}"
            if names.count(e.name) > 1:
                raise RecipeError(f"{where} is declared twice")
            unknown = [s for s in e.options if s not in self.option_sets]
            if unknown:
                raise RecipeError(f"{where}: no option set {', '.join(unknown)} in option_sets")
            if e.teacher is not None and e.teacher not in names:
                raise RecipeError(f"{where}: its teacher {e.teacher!r} is no experiment")
            if (e.teacher is None) != (e.family == "baseline" or e.role == "teacher"):
                raise RecipeError(f"{where}: a distilled student names its teacher, no other")
            tokens = " ".join(self.option_sets[s] for s in e.options).split()
            causal = _option(tokens, "--causal") == "true"
            if causal != e.streaming:
                raise RecipeError(f"{where}: streaming is {e.streaming} but its options "
                                  f"{'' if causal else 'do not '}say --causal true")  # fmt: skip
            self.run(e, DEFAULT_SEED)  # every placeholder resolves

    def with_settings(self, overrides: Mapping[str, object]) -> "Recipe":
        """The recipe with some settings replaced (only settings the file declares)."""
        unknown = [k for k in overrides if k not in self.settings]
        if unknown:
            raise RecipeError(
                f"{self.path}: no setting {', '.join(unknown)} (settings: "
                f"{', '.join(self.settings)})"
            )
        return replace(
            self, settings={**self.settings, **{k: str(v) for k, v in overrides.items()}}
        )

    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name``."""
        for e in self.experiments:
            if e.name == name:
                return e
        raise RecipeError(f"{self.path}: no experiment {name!r} (see --list)")

    def select(
        self,
        groups: Sequence[str] = ("main",),
        only: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> List[Experiment]:
        """The experiments of ``groups`` (``all``: every group) in file order; with ``only``,
        those named experiments instead (of any group); less those in ``exclude``."""
        for name in list(only) + list(exclude):
            self.experiment(name)  # raises on an unknown name
        bad = [g for g in groups if g != "all" and g not in GROUPS]
        if bad:
            raise RecipeError(f"no group {', '.join(bad)}: groups are all, {', '.join(GROUPS)}")
        if only:
            chosen = [e for e in self.experiments if e.name in only]
        elif "all" in groups:
            chosen = list(self.experiments)
        else:
            chosen = [e for e in self.experiments if set(e.groups) & set(groups)]
        return [e for e in chosen if e.name not in exclude]

    def epochs(self, e: Experiment) -> int:
        """Epochs of ``e``: its own, else the setting of its role."""
        if e.epochs is not None:
            return e.epochs
        return int(self.settings["teacher_epochs" if e.role == "teacher" else "student_epochs"])

    def run(self, e: Experiment, seed: int, exp_suffix: str = "") -> Run:
        """``e`` trained with ``seed``; ``exp_suffix`` is appended to a student's folder."""
        folder = exp_name(e.name + (exp_suffix if e.role == "student" else ""), seed)
        exp_root = Path(self.settings["exp_dir"])
        values = dict(self.settings, seed=str(seed))
        teacher = ""
        if e.teacher is not None:
            teacher_epoch = self.epochs(self.experiment(e.teacher))
            values.update(teacher_dir=str(exp_root / e.teacher), teacher_epoch=str(teacher_epoch))
            teacher = f"{e.teacher}@{teacher_epoch}"
        epochs = self.epochs(e)
        where = f"{self.path}: experiment {e.name!r}"
        parts = [
            _fill(self.option_sets[s], values, f"{where}, option set {s!r}") for s in e.options
        ]
        command = " ".join(
            [f"./train.py --exp-dir {exp_root / folder} --num-epochs {epochs}", *parts,
             _fill(self.common, values, f"{self.path}: common")]
        )  # fmt: skip
        tokens = command.split()
        chunk = left = None
        if e.streaming:
            chunk, left = _option(tokens, "--chunk-size"), _option(tokens, "--left-context")
            if chunk is None or left is None:
                raise RecipeError(
                    f"{where}: a streaming experiment needs --chunk-size and --left-context in "
                    "its options (decoding needs them)"
                )
        return Run(
            experiment=e,
            seed=seed,
            exp_dir=exp_root / folder,
            epochs=epochs,
            avg=int(self.settings["avg"]),
            method=_fill(e.method, values, f"{where}, method"),
            teacher=teacher,
            command=command,
            decode_options=_fill(self.decode, values, f"{self.path}: decode"),
            chunk=None if chunk is None else int(chunk),
            left=None if left is None else int(left),
        )

    def runs(
        self, experiments: Sequence[Experiment], seeds: Sequence[int] = (DEFAULT_SEED,),
        exp_suffix: str = "",
    ) -> List[Run]:  # fmt: skip
        """Every experiment with every seed (experiment by experiment)."""
        return [self.run(e, s, exp_suffix) for e in experiments for s in seeds]

    def is_current(self, row: Row) -> bool:
        """Whether ``row`` was trained by this recipe as it is: an experiment of the recipe
        (any seed, no ``--exp-suffix``) with the command the recipe gives it and the same
        teacher. A command without ``--seed`` is taken as the default seed's."""
        try:
            e = self.experiment(row.name)
        except RecipeError:
            return False
        run = self.run(e, row.seed)
        return (
            run.name == row.exp
            and run.teacher == row.teacher
            and _seedless(run.command) == _seedless(row.command)
            and (_option(row.command.split(), "--seed") or str(DEFAULT_SEED)) == str(row.seed)
        )

    def needs(self, experiments: Sequence[Experiment]) -> List[str]:
        """What the teacher must have made for ``experiments`` (in :data:`NEEDS` order)."""
        return [n for n in NEEDS if any(n in e.needs for e in experiments)]


def _experiment(entry: Mapping, path: Path) -> Experiment:
    name = entry.get("name", "?")
    where = f"{path}: experiment {name!r}"
    unknown = set(entry) - {"name", "group", "role", "family", "method", "streaming", "options",
                            "teacher", "needs", "epochs"}  # fmt: skip
    if unknown:
        raise RecipeError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    missing = [k for k in ("group", "role", "family", "method", "streaming", "options")
               if k not in entry]  # fmt: skip
    if missing:
        raise RecipeError(f"{where}: no {', '.join(missing)} (see the file's header)")
    groups = entry["group"]
    groups = tuple([groups] if isinstance(groups, str) else groups)
    checks = [
        (all(g in GROUPS for g in groups), f"group {groups} not in {', '.join(GROUPS)}"),
        (entry["role"] in ROLES, f"role {entry['role']!r} not in {', '.join(ROLES)}"),
        (entry["family"] in FAMILIES, f"family {entry['family']!r} not in {', '.join(FAMILIES)}"),
        (isinstance(entry["streaming"], bool), "streaming must be true or false"),
        (all(n in NEEDS for n in entry.get("needs", ())), f"needs must be of {', '.join(NEEDS)}"),
    ]
    for ok, problem in checks:
        if not ok:
            raise RecipeError(f"{where}: {problem}")
    return Experiment(
        name=str(name),
        groups=groups,
        role=entry["role"],
        family=entry["family"],
        method=str(entry["method"]),
        streaming=entry["streaming"],
        options=tuple(entry["options"]),
        teacher=entry.get("teacher"),
        needs=tuple(entry.get("needs", ())),
        epochs=entry.get("epochs"),
    )


def _fill(template: str, values: Mapping[str, str], where: str) -> str:
    try:
        return template.format_map(values)
    except KeyError as e:
        raise RecipeError(
            f"{where}: no value for {{{e.args[0]}}} (a setting, or teacher_dir / teacher_epoch "
            "of an experiment without a teacher)"
        ) from e


def _option(tokens: Sequence[str], name: str) -> Optional[str]:
    """The value of the last ``name`` option in ``tokens`` (None if absent)."""
    value = None
    for i, token in enumerate(tokens[:-1]):
        if token == name:
            value = tokens[i + 1]
    return value


def _seedless(command: str) -> List[str]:
    tokens = command.split()
    out, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token == "--seed":
            skip = True
        else:
            out.append(token)
    return out


# ---------------------------------------------------------------------------- steps


def resume_epoch(run: Run) -> Optional[int]:
    """Where training of ``run`` stands: None when finished (``epoch-<epochs>.pt`` exists),
    else the epoch to start from (1, or one after the last ``epoch-N.pt``)."""
    if (run.exp_dir / f"epoch-{run.epochs}.pt").is_file():
        return None
    for n in range(run.epochs - 1, 0, -1):
        if (run.exp_dir / f"epoch-{n}.pt").is_file():
            return n + 1
    return 1


def _print_command(python: str, command: str, out: IO[str]) -> None:
    print("+ " + " ".join(shlex.quote(t) for t in [python, *shlex.split(command)]), file=out)
    out.flush()


def _start(
    run: Run, command: str, append: bool, *, python: str, jobs: int, env: Dict[str, str],
    out: IO[str],
) -> Tuple[Run, subprocess.Popen, IO]:  # fmt: skip
    """Start one training; with one job at a time its output goes to ``out`` too (read until
    it ends), otherwise to its log only."""
    run.exp_dir.mkdir(parents=True, exist_ok=True)
    log = open(run.exp_dir / "train.log", "a" if append else "w")
    argv = [python, *shlex.split(command)]
    if jobs > 1:
        logging.info(f"{run.name} ({run.method}) in the background, one thread; "
                     f"log: {run.exp_dir}/train.log")  # fmt: skip
        return run, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log
    logging.info(f"training {run.name} ({run.method}); log: {run.exp_dir}/train.log")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)  # fmt: skip
    for line in proc.stdout:  # tee
        out.write(line)
        log.write(line)
    out.flush()
    proc.wait()
    return run, proc, log


def train(
    runs: Sequence[Run],
    *,
    python: str = sys.executable,
    jobs: int = 1,
    dry_run: bool = False,
    out: Optional[IO[str]] = None,
) -> None:
    """Train every run not trained yet, ``jobs`` at a time.

    A finished run (``epoch-<epochs>.pt``) is skipped; an interrupted one resumes after its
    last ``epoch-N.pt`` (``--start-epoch N+1``), its log appended to ``<exp>/train.log``. With
    ``jobs`` > 1 each training runs in the background with one thread (OMP_NUM_THREADS=1), its
    output in its log only; when one fails no other starts, and the error names it.
    Commands are printed to ``out`` (default: stdout).
    """
    out = out or sys.stdout
    todo = []
    for run in runs:
        start = resume_epoch(run)
        if start is None:
            logging.info(f"{run.exp_dir}/epoch-{run.epochs}.pt exists: {run.name} is trained, "
                         "skipping")  # fmt: skip
            continue
        command = run.command
        if start > 1:
            logging.info(f"{run.name}: resuming after {run.exp_dir}/epoch-{start - 1}.pt "
                         f"(log appended to {run.exp_dir}/train.log)")  # fmt: skip
            command += f" --start-epoch {start}"
        todo.append((run, command, start > 1))
    if dry_run:
        for _, command, _ in todo:
            _print_command(python, command, out)
        return
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running: List[Tuple[Run, subprocess.Popen, IO]] = []
    failed: List[Run] = []
    while todo or running:
        while todo and len(running) < jobs and not failed:
            running.append(_start(*todo.pop(0), python=python, jobs=jobs, env=env, out=out))
        if not running:
            break  # one failed: start no other
        while all(proc.poll() is None for _, proc, _ in running):
            time.sleep(0.1)
        for item in [i for i in running if i[1].poll() is not None]:
            run, proc, log = item
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                logging.error(f"{run.name}: training failed (exit {proc.returncode}); see "
                              f"{run.exp_dir}/train.log")  # fmt: skip
                failed.append(run)
    if failed:
        names = ", ".join(f"{r.name} ({r.exp_dir}/train.log)" for r in failed)
        raise RuntimeError(f"training failed: {names}; fix and re-run to resume")


def decode(
    runs: Sequence[Run],
    *,
    python: str = sys.executable,
    dry_run: bool = False,
    out: Optional[IO[str]] = None,
) -> None:
    """Decode test-clean and test-other of every run (streaming ones with simulated and
    chunk-by-chunk streaming); a mode whose result files are newer than the checkpoint is
    skipped. Commands are printed to ``out`` (default: stdout)."""
    out = out or sys.stdout
    for run in runs:
        ckpt = run.exp_dir / f"epoch-{run.epochs}.pt"
        if not dry_run and not ckpt.is_file():
            raise FileNotFoundError(f"No {ckpt}: train {run.name} first (--steps train)")
        for mode in run.decode_modes():
            suffix = run.wer_suffix(mode)
            summaries = [wer_summary_path(run.exp_dir, p, suffix) for p in TEST_PARTS]
            if ckpt.is_file() and all(
                s.is_file() and s.stat().st_mtime >= ckpt.stat().st_mtime for s in summaries
            ):
                logging.info(f"{run.name}: decoded ({suffix}), skipping")
                continue
            command = run.decode_command(mode)
            if dry_run:
                _print_command(python, command, out)
                continue
            logging.info(f"decoding {run.name} ({suffix})")
            proc = subprocess.run([python, *shlex.split(command)])
            if proc.returncode != 0:
                raise RuntimeError(f"decoding {run.name} failed (exit {proc.returncode}): "
                                   f"{command}")  # fmt: skip


def write_rows(runs: Sequence[Run], csv_path: Path, *, dry_run: bool = False) -> List[Row]:
    """Measure each run (train summary, simulated-streaming WER for streaming models) and
    add its row to ``csv_path``, replacing the row of the same experiment in place."""
    rows = []
    for run in runs:
        if dry_run:
            logging.info(f"would write the row of {run.name} to {csv_path}")
            continue
        e = run.experiment
        row = measured_row(
            run.exp_dir, role=e.role, family=e.family, method=run.method, streaming=e.streaming,
            seed=run.seed, teacher=run.teacher, command=run.command,
            wer_suffix=run.wer_suffix(run.decode_modes()[0]),
        )  # fmt: skip
        add_row(csv_path, row)
        logging.info(f"{csv_path}: {row.exp} {row.test_clean:.2f} / {row.test_other:.2f}")
        rows.append(row)
    return rows


def render_results(recipe_path: Path, csv_path: Path) -> str:
    """RESULTS.md of a recipe file: its rows, the current recipe being the file as it is
    (default settings), whatever settings the rows were trained with."""
    recipe = Recipe.load(recipe_path)
    return render(
        read_rows(csv_path),
        recipe_names=[e.name for e in recipe.experiments],
        is_current=recipe.is_current,
        title=recipe.results.get("title", "Results"),
        generated_by=RENDER_COMMAND,
        csv_name=Path(csv_path).name,
        intro=" ".join(recipe.results.get("intro", "").split()),
        notes=recipe.results.get("notes") or None,
    )
