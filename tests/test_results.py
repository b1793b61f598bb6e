"""Results as data (mvq_kd.results): the rows of results.csv, their measurement from an
experiment folder, and the RESULTS.md rendered from them; the committed egs/synth files."""

import json
import re

import pytest

from mvq_kd.experiments import Recipe, render_results
from mvq_kd.results import (
    COLUMNS,
    FAMILIES,
    ROLES,
    Row,
    add_row,
    measured_row,
    read_rows,
    render,
    upsert,
    write_rows,
)
from tests.conftest import REPO

SYNTH = REPO / "egs/synth"


def row(exp="student-x", **changes) -> Row:
    cells = dict(
        exp=exp,
        role="student",
        family="mvq",
        method="MVQ-KD",
        streaming=True,
        params_m=1.89,
        epochs=10,
        seed=42,
        teacher="teacher@10",
        test_clean=50.0,
        test_other=80.0,
        train_minutes=13,
        command=f"./train.py --exp-dir e/{exp}",
    )
    return Row(**{**cells, **changes})  # fmt: skip


def test_columns_are_exactly_these(tmp_path):
    assert COLUMNS == ("exp", "role", "family", "method", "streaming", "params_m", "epochs",
                       "seed", "teacher", "test_clean", "test_other", "train_minutes",
                       "command")  # fmt: skip
    path = tmp_path / "results.csv"
    write_rows(path, [row(method="L2 (a, b)", command='./train.py --x "a b"')])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1].startswith('student-x,student,mvq,"L2 (a, b)",yes,1.89,10,42,teacher@10,')
    assert read_rows(path) == [row(method="L2 (a, b)", command='./train.py --x "a b"')]


def test_rows_are_checked():
    with pytest.raises(ValueError, match="family 'mvqkd' is not one of"):
        row(family="mvqkd")
    with pytest.raises(ValueError, match="a teacher has no teacher"):
        row(role="teacher", family="baseline")
    with pytest.raises(ValueError, match="needs its teacher"):
        row(teacher="")
    row(family="baseline", teacher="")  # a baseline student learns from no teacher


def test_bad_files_are_explained(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("exp,role\nx,student\n")
    with pytest.raises(ValueError, match="header must be exactly exp,role,family"):
        read_rows(path)
    write_rows(path, [row()])
    path.write_text(path.read_text().replace(",yes,", ",maybe,"))
    with pytest.raises(ValueError, match=r"results.csv:2: bad results row .*yes or no"):
        read_rows(path)
    write_rows(path, [row()])
    path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")
    with pytest.raises(ValueError, match="two rows of experiment 'student-x'"):
        read_rows(path)


def test_upsert_replaces_in_place_and_warns_of_another_command(tmp_path, caplog):
    path = tmp_path / "results.csv"
    for exp in ("a", "b", "c"):
        add_row(path, row(exp))
    add_row(path, row("b", test_other=70.0))  # same command: replaced quietly
    assert not caplog.records
    rows = read_rows(path)
    assert [r.exp for r in rows] == ["a", "b", "c"] and rows[1].test_other == 70.0
    with caplog.at_level("WARNING"):
        add_row(path, row("a", command="./train.py --other"))
    assert [r.exp for r in read_rows(path)] == ["a", "b", "c"]
    assert read_rows(path)[0].command == "./train.py --other"
    assert "replacing the row of a, trained by another command: ./train.py --exp-dir e/a" in (
        caplog.text
    )
    assert [r.exp for r in upsert([row("a")], row("d"))] == ["a", "d"]


def fake_exp(root, name, wers=(41.5, 71.25), distillation=None, seconds=754.0):
    exp = root / name
    (exp / "greedy_search").mkdir(parents=True)
    summary = {"params": 1_886_000, "epochs": 10, "train_seconds": seconds,
               "distillation": distillation}  # fmt: skip
    (exp / "train-summary.json").write_text(json.dumps(summary))
    for part, wer in zip(("test-clean", "test-other"), wers):
        (exp / "greedy_search" / f"wer-summary-{part}-epoch-10-avg-3.txt").write_text(
            f"settings\tWER\nepoch-10-avg-3\t{wer:.2f}\n"
        )
    return exp


def test_measured_row(tmp_path):
    kw = dict(role="student", method="MVQ-KD", streaming=False, seed=43, teacher="teacher@10",
              command="./train.py --a", wer_suffix="epoch-10-avg-3")  # fmt: skip
    exp = fake_exp(tmp_path, "s", distillation={"codebook_loss_scale": 0.1})
    r = measured_row(exp, family="mvq", **kw)
    assert (r.exp, r.params_m, r.epochs, r.seed) == ("s", 1.89, 10, 43)
    assert (r.test_clean, r.test_other, r.train_minutes) == (41.5, 71.25, 13)
    with pytest.raises(ValueError, match="trained with distillation .* family 'baseline'"):
        measured_row(exp, family="baseline", **{**kw, "teacher": ""})
    base = fake_exp(tmp_path, "b")
    with pytest.raises(ValueError, match="trained without distillation"):
        measured_row(base, family="mvq", **kw)
    with pytest.raises(FileNotFoundError, match="wer-summary-test-clean-epoch-9-avg-3"):
        measured_row(exp, family="mvq", **{**kw, "wer_suffix": "epoch-9-avg-3"})
    with pytest.raises(FileNotFoundError, match="training of .* did not finish"):
        measured_row(tmp_path / "none", family="mvq", **kw)


def test_render_means_spreads_and_family_tables():
    rows = [
        row("teacher", role="teacher", family="baseline", method="baseline", teacher="",
            streaming=False, test_clean=40.0, test_other=70.0),
        row("s", test_clean=50.0, test_other=80.0),
        row("s-seed43", seed=43, test_clean=52.0, test_other=79.0),
        row("s-seed44", seed=44, test_clean=51.0, test_other=81.5),
        row("s-probe", test_clean=10.0, test_other=10.0),
    ]  # fmt: skip
    text = render(
        rows,
        recipe_names=["teacher", "s", "never"],
        is_current=lambda r: r.exp != "s-probe",
        title="T",
        generated_by="make it",
    )
    assert text.startswith("# T\n\nGenerated from [`results.csv`](results.csv) by `make it`")
    headline = text.split("## Current recipe")[1].split("\n## ")[0]
    # Mean over the three seeds, spread (max - min) in parentheses, number of seeds.
    assert "| `s` | MVQ-KD | yes | 1.89 | teacher@10 | 51.00 (2.00) | 80.17 (2.50) | 3 | 13 |" in (
        headline
    )
    assert "| `teacher` | baseline | no | 1.89 | - | 40.00 | 70.00 | 1 | 13 |" in headline
    assert "| `never` | no row of the current recipe (not trained yet)" in headline
    assert "s-probe" not in headline
    families = re.findall(r"^## (.*)$", text, re.M)
    assert families == ["Current recipe", "Baselines (no distillation)", "MVQ-KD", "Other runs"]
    mvq = text.split("## MVQ-KD")[1].split("\n## ")[0]
    assert [line.split("`")[1] for line in mvq.splitlines()[4:]] == ["s", "s-seed43", "s-seed44"]
    assert "<details><summary>command</summary><code>./train.py --exp-dir e/s-seed43" in mvq
    assert "| `s-probe` | mvq | MVQ-KD |" in text.split("## Other runs")[1]


def test_committed_results_are_valid_and_rendered():
    path = SYNTH / "results.csv"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = read_rows(path)  # every cell parses and every row checks (Row.__post_init__)
    assert len(rows) >= 3
    # The rows of the first corpus (Markov text, until 2026-12-04), kept for NOTES.md
    assert len(read_rows(SYNTH / "results-corpus-v1.csv")) == 70
    recipe = Recipe.load(SYNTH / "experiments.yaml")
    for r in rows:
        assert r.role in ROLES and r.family in FAMILIES
        assert 0 < r.test_clean < 100 and 0 < r.test_other < 100 and r.params_m > 0
        assert re.fullmatch(r"|[\w.-]+@\d+( \(.+\))?", r.teacher), r.teacher
        assert (r.teacher == "") == (r.family == "baseline"), r.exp
        seed = re.search(r"--seed (\d+)", r.command)
        assert r.seed == (int(seed.group(1)) if seed else 42), r.exp
    current = [r for r in rows if recipe.is_current(r)]
    for r in current:  # (some older runs were renamed after training: not these)
        assert f"--exp-dir egs/synth/exp/{r.exp} " in r.command, r.exp
    assert {r.exp for r in current} >= {"teacher", "student-baseline", "student-mvq-kd"}
    md = (SYNTH / "RESULTS.md").read_text()
    assert md == render_results(SYNTH / "experiments.yaml", path), (
        "egs/synth/RESULTS.md is not generated from results.csv: run "
        "python local/run_experiments.py --steps render"
    )
    assert len(md.encode()) < 30_000
