"""Results as data: the rows of ``egs/<corpus>/results.csv`` and the RESULTS.md made from them.

One row per trained model, keyed by its experiment folder name (``exp``), with exactly the
columns of :data:`COLUMNS`. The recipe fills a row from what it measured (``train-summary.json``
written by the trainer, the ``wer-summary-*`` files written by ``decode.py``; see
:func:`measured_row`), :func:`add_row` replaces the row of the same experiment in place, and
:func:`render` turns the rows into the Markdown of ``RESULTS.md``: a headline table of the
current recipe (mean and spread over seeds), one table per family and a table of the other
runs. Which rows belong to the current recipe is the caller's decision (the recipe driver,
``mvq_kd.experiments``, compares each row's command with the one it would run).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from mvq_kd.utils import atomic_path

COLUMNS = (
    "exp",
    "role",
    "family",
    "method",
    "streaming",
    "params_m",
    "epochs",
    "seed",
    "teacher",
    "test_clean",
    "test_other",
    "train_minutes",
    "command",
)
ROLES = ("teacher", "student")
FAMILIES = ("baseline", "mvq", "l1", "l2", "layerwise", "seqkd", "combined")
FAMILY_TITLES = {
    "baseline": "Baselines (no distillation)",
    "mvq": "MVQ-KD",
    "l1": "L1 regression of the teacher embeddings",
    "l2": "L2 regression of the teacher embeddings",
    "layerwise": "Layer-wise KD",
    "seqkd": "Sequence-level KD",
    "combined": "Combinations of families",
}
DEFAULT_SEED = 42
TEST_PARTS = ("test-clean", "test-other")


def exp_name(name: str, seed: int) -> str:
    """The folder of experiment ``name`` trained with ``seed``: ``name`` for the default
    seed, ``name-seed<N>`` for another (e.g. ``student-baseline-seed43``)."""
    return name if seed == DEFAULT_SEED else f"{name}-seed{seed}"


def base_name(exp: str, seed: int) -> str:
    """The inverse of :func:`exp_name`: the experiment name without its seed suffix."""
    suffix = f"-seed{seed}"
    return exp[: -len(suffix)] if seed != DEFAULT_SEED and exp.endswith(suffix) else exp


@dataclass(frozen=True)
class Row:
    """One trained model: a line of ``results.csv``.

    Attributes:
        exp: the experiment folder name (unique in the file).
        role: ``teacher`` or ``student``.
        family: the distillation family (:data:`FAMILIES`; ``baseline``: none).
        method: a human label (``MVQ-KD``, ``L2 (teacher on the fly)``, ...).
        streaming: whether the encoder is causal (decoded with simulated streaming).
        params_m: parameters of the model, in millions.
        epochs: epochs trained.
        seed: the ``--seed`` of the training.
        teacher: the teacher experiment and epoch it learned from (``teacher@10``, with a
            note in parentheses when it was another run of that experiment); empty for
            teachers and baselines.
        test_clean, test_other: WER (%), greedy search.
        train_minutes: wall-clock training time in minutes.
        command: the single-line ``train.py`` command.
    """

    exp: str
    role: str
    family: str
    method: str
    streaming: bool
    params_m: float
    epochs: int
    seed: int
    teacher: str
    test_clean: float
    test_other: float
    train_minutes: int
    command: str

    def __post_init__(self) -> None:
        problems = []
        if self.role not in ROLES:
            problems.append(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.role == "teacher" and self.teacher:
            problems.append(f"a teacher has no teacher (got {self.teacher!r})")
        if self.family != "baseline" and "@" not in self.teacher:
            problems.append(f"a distilled model needs its teacher as <exp>@<epoch>, not "
                            f"{self.teacher!r}")  # fmt: skip
        if not self.exp or "\n" in self.command or not self.command.startswith("./train.py "):
            problems.append("exp must be set and command be one line starting ./train.py")
        for name in ("params_m", "test_clean", "test_other"):
            if not 0 <= getattr(self, name) < 1e4:
                problems.append(f"{name} {getattr(self, name)} is out of range")
        if problems:
            raise ValueError(f"results row {self.exp!r}: " + "; ".join(problems))

    @property
    def name(self) -> str:
        """The experiment name without its seed suffix (seeds of a row are grouped on it)."""
        return base_name(self.exp, self.seed)

    def to_csv(self) -> Dict[str, str]:
        """The row as the strings of its csv cells."""
        values = asdict(self)
        values["streaming"] = "yes" if self.streaming else "no"
        for name in ("params_m", "test_clean", "test_other"):
            values[name] = f"{values[name]:.2f}"
        return {k: str(v) for k, v in values.items()}

    @classmethod
    def from_csv(cls, cells: Dict[str, str], where: str = "") -> "Row":
        """Parse the cells of one csv line; errors name ``where`` (file and line)."""
        try:
            if cells["streaming"] not in ("yes", "no"):
                raise ValueError(f"streaming must be yes or no, not {cells['streaming']!r}")
            return cls(
                exp=cells["exp"],
                role=cells["role"],
                family=cells["family"],
                method=cells["method"],
                streaming=cells["streaming"] == "yes",
                params_m=float(cells["params_m"]),
                epochs=int(cells["epochs"]),
                seed=int(cells["seed"]),
                teacher=cells["teacher"],
                test_clean=float(cells["test_clean"]),
                test_other=float(cells["test_other"]),
                train_minutes=int(cells["train_minutes"]),
                command=cells["command"],
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{where}: bad results row ({e}); fix or delete the line") from e


assert tuple(f.name for f in fields(Row)) == COLUMNS


def read_rows(path: Path) -> List[Row]:
    """The rows of a ``results.csv`` (none if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(
                f"{path}: the header must be exactly {','.join(COLUMNS)}, not "
                f"{','.join(reader.fieldnames or ())}"
            )
        rows = [Row.from_csv(cells, f"{path}:{reader.line_num}") for cells in reader]
    seen = set()
    for row in rows:
        if row.exp in seen:
            raise ValueError(f"{path}: two rows of experiment {row.exp!r}; delete one")
        seen.add(row.exp)
    return rows


def write_rows(path: Path, rows: Sequence[Row]) -> None:
    """Write ``rows`` to ``path`` atomically (a reader never sees a half-written file)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.to_csv())
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(out.getvalue())


def upsert(rows: Sequence[Row], row: Row, where: str = "results") -> List[Row]:
    """``rows`` with ``row`` replacing the row of the same experiment in its place, or added
    at the end. Replacing a row trained by another command (an ``--exp-suffix`` that names an
    earlier experiment, changed options) is logged as a warning naming both commands."""
    out = list(rows)
    for i, old in enumerate(out):
        if old.exp == row.exp:
            if old.command != row.command:
                logging.warning(
                    f"{where}: replacing the row of {row.exp}, trained by another command: "
                    f"{old.command} (now {row.command}); give the new run another experiment "
                    "folder (--exp-suffix) to keep both"
                )
            out[i] = row
            return out
    return out + [row]


def add_row(path: Path, row: Row) -> None:
    """Add ``row`` to the csv at ``path`` or replace its experiment's row in place."""
    write_rows(path, upsert(read_rows(path), row, str(path)))


def wer_summary_path(exp_dir: Path, part: str, suffix: str, method: str = "greedy_search") -> Path:
    """``<exp_dir>/<method>/wer-summary-<part>-<suffix>.txt``, which decode.py writes."""
    return Path(exp_dir) / method / f"wer-summary-{part}-{suffix}.txt"


def read_wer(exp_dir: Path, part: str, suffix: str, method: str = "greedy_search") -> float:
    """WER (%) from :func:`wer_summary_path` (decode.py's result file)."""
    path = wer_summary_path(exp_dir, part, suffix, method)
    if not path.is_file():
        raise FileNotFoundError(f"No {path}: decode {exp_dir} first (decode.py)")
    return float(path.read_text().splitlines()[1].split("\t")[1])


def measured_row(
    exp_dir: Path,
    *,
    role: str,
    family: str,
    method: str,
    streaming: bool,
    seed: int,
    teacher: str,
    command: str,
    wer_suffix: str,
) -> Row:
    """The row of a trained and decoded experiment: parameters, epochs and train time from
    its ``train-summary.json``, WERs from its greedy-search ``wer-summary-*-<wer_suffix>``.

    Raises:
        FileNotFoundError: training or decoding did not finish.
        ValueError: the summary says the model was trained with distillation and ``family``
            is ``baseline``, or the other way round.
    """
    exp_dir = Path(exp_dir)
    summary_path = exp_dir / "train-summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"No {summary_path}: training of {exp_dir} did not finish")
    summary = json.loads(summary_path.read_text())
    if "distillation" in summary and (summary["distillation"] is None) != (family == "baseline"):
        how = "without" if summary["distillation"] is None else "with"
        raise ValueError(
            f"{exp_dir} was trained {how} distillation ({summary['distillation']}) but its "
            f"row says family {family!r}: fix the experiment's family or options"
        )
    clean, other = (read_wer(exp_dir, part, wer_suffix) for part in TEST_PARTS)
    return Row(
        exp=exp_dir.name,
        role=role,
        family=family,
        method=method,
        streaming=streaming,
        params_m=round(summary["params"] / 1e6, 2),
        epochs=int(summary["epochs"]),
        seed=seed,
        teacher=teacher,
        test_clean=clean,
        test_other=other,
        train_minutes=int(round(summary["train_seconds"] / 60)),
        command=command,
    )


# ---------------------------------------------------------------------------- rendering


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def _mean_spread(values: Sequence[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({max(values) - min(values):.2f})"


def _yes_no(streaming: bool) -> str:
    return "yes" if streaming else "no"


def _details(command: str) -> str:
    return f"<details><summary>command</summary><code>{command}</code></details>"


def render(
    rows: Sequence[Row],
    *,
    recipe_names: Sequence[str],
    is_current: Callable[[Row], bool],
    title: str,
    generated_by: str,
    csv_name: str = "results.csv",
    intro: str = "",
    notes: Optional[str] = None,
) -> str:
    """The Markdown of ``RESULTS.md`` for ``rows``.

    Args:
        rows: the rows of ``results.csv``.
        recipe_names: the experiments of the current recipe, in the headline's order.
        is_current: whether a row was trained by the current recipe (its command, teacher).
        title: the first heading.
        generated_by: the command that regenerates the file (said at its top).
        csv_name: the csv's file name (relative links).
        intro: a paragraph after the title (how the WERs were measured).
        notes: file name of the findings in prose, linked when given.

    Returns:
        a headline table (one line per experiment of the recipe: mean WER and, in
        parentheses, its spread max - min over the seeds measured), one table per family of
        the current recipe's rows (each with its command in a collapsed block) and a table
        of the other runs (earlier recipes, other teacher runs, probes; commands in the csv).
    """
    current = [r for r in rows if is_current(r)]
    other = [r for r in rows if not is_current(r)]
    order = {name: i for i, name in enumerate(recipe_names)}
    current = sorted(current, key=lambda r: (order.get(r.name, len(order)), r.seed))
    out = [
        f"# {title}",
        "",
        f"Generated from [`{csv_name}`]({csv_name}) by `{generated_by}`; do not edit by hand.",
    ]
    if intro:
        out += ["", intro]
    if notes:
        out += ["", f"What was tried and what it showed, in prose: [{notes}]({notes})."]
    out += [
        "",
        "## Current recipe",
        "",
        "Mean WER (%) over the seeds trained, the spread (max - min) in parentheses.",
        "",
    ]
    lines = []
    for name in recipe_names:
        group = [r for r in current if r.name == name]
        if not group:
            where = "see Other runs" if any(r.name == name for r in other) else "not trained yet"
            lines.append([f"`{name}`", f"no row of the current recipe ({where})", "", "",
                          "", "", "", "0", ""])  # fmt: skip
            continue
        first = group[0]
        lines.append([
            f"`{name}`",
            first.method,
            _yes_no(first.streaming),
            f"{first.params_m:.2f}",
            first.teacher or "-",
            _mean_spread([r.test_clean for r in group]),
            _mean_spread([r.test_other for r in group]),
            str(len(group)),
            str(round(sum(r.train_minutes for r in group) / len(group))),
        ])  # fmt: skip
    out += _table(
        ["experiment", "method", "streaming", "params (M)", "teacher", "test-clean",
         "test-other", "seeds", "train min"],
        lines,
    )  # fmt: skip
    for family in FAMILIES:
        group = [r for r in current if r.family == family]
        if not group:
            continue
        out += ["", f"## {FAMILY_TITLES[family]}", ""]
        out += _table(
            ["exp", "method", "streaming", "params (M)", "epochs", "seed", "teacher",
             "test-clean", "test-other", "train min", "command"],
            [[f"`{r.exp}`", r.method, _yes_no(r.streaming), f"{r.params_m:.2f}", str(r.epochs),
              str(r.seed), r.teacher or "-", f"{r.test_clean:.2f}", f"{r.test_other:.2f}",
              str(r.train_minutes), _details(r.command)] for r in group],
        )  # fmt: skip
    if other:
        out += [
            "",
            "## Other runs",
            "",
            "Earlier recipes, other runs of the teacher, probes of other settings and "
            f"`--exp-suffix` variants; their commands are in [`{csv_name}`]({csv_name}).",
            "",
        ]
        ordered = sorted(other, key=lambda r: FAMILIES.index(r.family))
        out += _table(
            ["exp", "family", "method", "streaming", "params (M)", "epochs", "seed", "teacher",
             "test-clean", "test-other", "train min"],
            [[f"`{r.exp}`", r.family, r.method, _yes_no(r.streaming), f"{r.params_m:.2f}",
              str(r.epochs), str(r.seed), r.teacher or "-", f"{r.test_clean:.2f}",
              f"{r.test_other:.2f}", str(r.train_minutes)] for r in ordered],
        )  # fmt: skip
    return "\n".join(out) + "\n"
