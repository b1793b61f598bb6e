"""The recipes' commands.

egs/librispeech/run.sh: every train.py / decode.py command it prints (--dry-run) parses.
egs/synth: the experiment matrix (egs/synth/experiments.yaml) run by local/run_experiments.py
gives commands that parse with the programs' own options, folders named by seed and suffix,
resumes interrupted trainings, skips finished ones, trains several at once; egs/synth/run.sh
hands its options to that driver stage by stage.
"""

import importlib.util
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import decode as decode_cli
import train as train_cli
from mvq_kd.experiments import GROUPS, Recipe, RecipeError
from mvq_kd.results import Row, read_rows
from tests.conftest import REPO

RECIPE = REPO / "egs/synth/experiments.yaml"
spec = importlib.util.spec_from_file_location("run_experiments", REPO / "local/run_experiments.py")
driver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver)
TEACHER_EPOCHS = int(Recipe.load(RECIPE).settings["teacher_epochs"])


def dry_run(*args) -> list:
    out = subprocess.run(
        ["bash", "egs/librispeech/run.sh", "--dry-run", "true", *args],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [shlex.split(line.split(" + ", 1)[1]) for line in out.splitlines() if " + " in line]


def test_librispeech_commands_parse():
    unlabeled = "train-clean-360 train-other-500"
    commands = dry_run("--unlabeled-libri", unlabeled, "--full-libri", "false")
    parsers = {"train.py": train_cli.get_parser(), "decode.py": decode_cli.get_parser()}
    seen = {name: 0 for name in parsers}
    for cmd in commands:
        for name, parser in parsers.items():
            if name in cmd:
                parser.parse_args(cmd[cmd.index(name) + 1 :])  # exits on an unknown option
                seen[name] += 1
    # Teacher, streaming student, 3 MVQ-KD, 2 layer-wise, 3 sizes x 3, combined.
    assert seen["train.py"] == 2 + 3 + 2 + 9 + 1
    assert seen["decode.py"] > 0
    trains = [c for c in commands if "train.py" in c]
    combined = next(c for c in trains if c[c.index("--exp-dir") + 1].endswith("causal-combined"))
    for option in ("--codebook-loss-scale", "--feature-loss-scale", "--pseudo-labels",
                   "--unlabeled-parts"):  # fmt: skip
        assert option in combined


@pytest.fixture
def drive(capsys, caplog, monkeypatch):
    """local/run_experiments.py in this process (it works from the repository root): its
    printed commands and log messages."""
    monkeypatch.chdir(REPO)
    caplog.set_level(logging.INFO)

    def run(exp, *args) -> str:
        capsys.readouterr()
        caplog.clear()
        driver.main(["--exp-dir", str(exp), *args])
        return capsys.readouterr().out + caplog.text

    return run


def commands(out: str, program: str) -> list:
    """The argument lists after ``program`` of the driver's '+ ' lines."""
    cmds = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]
    return [c[c.index(program) + 1 :] for c in cmds if program in c]


def test_experiments_per_group():
    recipe = Recipe.load(RECIPE)
    counts = {g: len(recipe.select([g])) for g in GROUPS}
    # main: teacher, streaming baseline, MVQ-KD; kd-baselines: 2 streaming L2, the
    # non-streaming baseline, MVQ-KD and 2 L2; layerwise: 3 ablations + unlabeled; seq-kd:
    # 3 baselines, 3 sizes, 2 unlabeled; combined: MVQ or L2 + layer-wise + sequence-level,
    # L2 + sequence-level on the unlabeled split, streaming or not.
    assert counts == {"main": 3, "kd-baselines": 6, "layerwise": 4, "seq-kd": 8, "combined": 6}
    assert len(recipe.select(["all"])) == len(recipe.experiments) == 26
    assert recipe.needs(recipe.select(["main"])) == ["mvq"]
    assert recipe.needs(recipe.select(["seq-kd"])) == ["nbest"]
    assert recipe.needs(recipe.select(["combined"])) == ["mvq", "nbest", "mvq-nbest"]
    assert recipe.needs(recipe.select(["layerwise"])) == []
    with pytest.raises(RecipeError, match="no experiment 'student-nope'"):
        recipe.select(only=["student-nope"])


def test_synth_commands_parse(tmp_path, drive):
    out = drive(tmp_path, "--groups", "all", "--dry-run",
                     "--steps", "train", "decode")  # fmt: skip
    trains, decodes = commands(out, "./train.py"), commands(out, "./decode.py")
    assert len(trains) == 26
    assert len(decodes) == 26 + 11  # streaming models decode simulated and chunked
    for cmd in decodes:
        args = decode_cli.get_parser().parse_args(cmd)  # exits on an unknown option
        teacher = args.exp_dir.name == "teacher"
        assert args.epoch == (TEACHER_EPOCHS if teacher else 10) and args.avg == 3
    for cmd in trains:
        args = train_cli.get_parser().parse_args(cmd)
        name = args.exp_dir.name
        assert args.exp_dir.parent == tmp_path and args.seed == 42
        assert args.num_epochs == (TEACHER_EPOCHS if name == "teacher" else 10)
        assert args.start_epoch == 1
        if name == "teacher":  # the teacher alone learns from train-teacher
            assert args.train_parts == ["train", "train-teacher"] and args.dropout == 0
        else:
            assert args.train_parts == ["train"]
        if name.endswith("combined-l2-unlabeled"):  # pseudo labels: unlabeled only
            assert args.pseudo_labels == "nbest" and args.ground_truth_weight == 1
            assert args.unlabeled_parts == ["train-unlabeled"] and args.unlabeled_ratio == 0.5
            assert args.embedding_source == "teacher" and args.feature_loss_scale == 0
            assert args.attention_loss_scale == args.apc_loss_scale == 0  # no layer-wise KD
        elif "combined" in name:  # all three families in one run
            assert args.pseudo_labels == "nbest" and args.layerwise_connections == 2
            if "combined-l2" in name:
                assert args.embedding_source == "teacher" and args.quantizer is None
            else:
                assert args.quantizer is not None
        if args.teacher_model is not None:
            assert str(args.teacher_model) == str(tmp_path / "teacher")
            assert args.teacher_epoch == TEACHER_EPOCHS


def test_seeds_and_suffix_name_the_folders(tmp_path, drive):
    out = drive(tmp_path, "--only", "teacher", "student-l2-teacher",
                     "--seeds", "42", "43", "--exp-suffix", "-t20", "--teacher-epochs", "20",
                     "--dry-run", "--steps", "train")  # fmt: skip
    by_folder = {Path(c[c.index("--exp-dir") + 1]).name: c for c in commands(out, "./train.py")}
    # The suffix names students only: the teacher they learn from stays `teacher`.
    assert list(by_folder) == ["teacher", "teacher-seed43", "student-l2-teacher-t20",
                               "student-l2-teacher-t20-seed43"]  # fmt: skip
    for folder, cmd in by_folder.items():
        args = train_cli.get_parser().parse_args(cmd)
        assert args.seed == (43 if folder.endswith("-seed43") else 42)
    args = train_cli.get_parser().parse_args(by_folder["student-l2-teacher-t20-seed43"])
    assert str(args.teacher_model) == str(tmp_path / "teacher") and args.teacher_epoch == 20
    assert args.num_epochs == 10
    assert train_cli.get_parser().parse_args(by_folder["teacher"]).num_epochs == 20
    run = (
        Recipe.load(RECIPE)
        .with_settings({"teacher_epochs": 20})
        .run(Recipe.load(RECIPE).experiment("student-l2-teacher"), 43, "-t20")
    )
    assert run.name == "student-l2-teacher-t20-seed43" and run.teacher == "teacher@20"


def test_settings_override(tmp_path, drive):
    out = drive(tmp_path, "--only", "student-nonstreaming-4x80-seq-kd",
                     "--set", "ground_truth_weight=0.8", "pseudo_labels=1best", "--dry-run",
                     "--steps", "train")  # fmt: skip
    (cmd,) = commands(out, "./train.py")
    args = train_cli.get_parser().parse_args(cmd)
    assert args.ground_truth_weight == 0.8 and args.pseudo_labels == "1best"
    with pytest.raises(RecipeError, match="no setting nope"):
        drive(tmp_path, "--set", "nope=1", "--dry-run")


def test_print_setting_is_what_run_sh_reads(capsys):
    """run.sh takes the teacher layer of its codebook stage from the matrix, not a copy."""
    driver.main(["--print-setting", "teacher_layer", "--set", "teacher_layer=3"])
    assert capsys.readouterr().out.strip() == "3"
    with pytest.raises(SystemExit, match="no setting nope"):
        driver.main(["--print-setting", "nope"])
    assert "--print-setting teacher_layer" in (REPO / "egs/synth/run.sh").read_text()


def fake_python(path: Path, body: str) -> str:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return str(path)


def test_training_resumes_after_last_epoch_and_skips_finished(tmp_path, drive):
    exp = tmp_path / "exp"
    stub = fake_python(tmp_path / "python", 'echo "$*"\n')  # records its arguments
    teacher = exp / "teacher"
    args = ("--only", "teacher", "--steps", "train", "--python", stub)
    drive(exp, *args)
    first = (teacher / "train.log").read_text()
    assert first.startswith("./train.py --exp-dir") and "--start-epoch" not in first
    for n in (1, 2, 3):  # an interrupted run: epochs 1-3 saved
        (teacher / f"epoch-{n}.pt").touch()
    out = drive(exp, *args)
    assert f"resuming after {teacher}/epoch-3.pt" in out
    lines = (teacher / "train.log").read_text().splitlines()
    assert lines[0] == first.strip()  # appended, not overwritten
    assert lines[1] == first.strip() + " --start-epoch 4"
    (teacher / f"epoch-{TEACHER_EPOCHS}.pt").touch()
    assert "teacher is trained, skipping" in drive(exp, *args)
    assert len((teacher / "train.log").read_text().splitlines()) == 2
    # A finished run is not printed by a dry run either; an unfinished one is.
    out = drive(exp, "--only", "teacher", "student-baseline",
                     "--dry-run", "--steps", "train")  # fmt: skip
    assert [Path(c[1]).name for c in commands(out, "./train.py")] == ["student-baseline"]


def test_students_train_in_parallel_jobs(tmp_path, drive):
    stub = fake_python(tmp_path / "python", 'echo "$* threads=$OMP_NUM_THREADS"; sleep 0.3\n')
    args = ("--groups", "seq-kd", "--steps", "train", "--train-jobs", "2", "--python", stub)
    out = drive(tmp_path / "exp", *args)
    assert out.count("in the background, one thread") == 8
    logs = sorted((tmp_path / "exp").glob("*/train.log"))
    assert len(logs) == 8
    assert all(log.read_text().strip().endswith("threads=1") for log in logs)

    fake_python(tmp_path / "python", "sleep 0.2; exit 3\n")  # a failing training stops the rest
    with pytest.raises(RuntimeError, match="training failed: student-nonstreaming-"):
        drive(tmp_path / "exp2", *args)
    assert len(list((tmp_path / "exp2").glob("*/train.log"))) == 2  # the first two only


def test_decoding_skips_decoded_models(tmp_path, drive):
    args = ("--only", "student-baseline", "--dry-run", "--steps", "decode")
    out = drive(tmp_path, *args)
    modes = [decode_cli.get_parser().parse_args(c).streaming for c in commands(out, "./decode.py")]
    assert modes == ["simulated", "chunked"]
    exp = tmp_path / "student-baseline"
    (exp / "greedy_search").mkdir(parents=True)
    (exp / "epoch-10.pt").touch()
    for part in ("test-clean", "test-other"):  # the names decode.py writes
        name = f"wer-summary-{part}-epoch-10-avg-3-simulated-chunk-4-left-16.txt"
        (exp / "greedy_search" / name).write_text("settings\tWER\nx\t1.0\n")
    out = drive(tmp_path, *args)
    modes = [decode_cli.get_parser().parse_args(c).streaming for c in commands(out, "./decode.py")]
    assert modes == ["chunked"] and "decoded (epoch-10-avg-3-simulated" in out


def test_current_recipe_rows():
    recipe = Recipe.load(RECIPE)
    run = recipe.run(recipe.experiment("student-l2-teacher"), 43)

    def row(**changes) -> Row:
        cells = dict(
            exp=run.name,
            role="student",
            family="l2",
            method=run.method,
            streaming=True,
            params_m=1.89,
            epochs=10,
            seed=43,
            teacher=run.teacher,
            test_clean=50.0,
            test_other=70.0,
            train_minutes=20,
            command=run.command,
        )
        return Row(**{**cells, **changes})  # fmt: skip

    assert recipe.is_current(row())
    assert not recipe.is_current(row(teacher="teacher@10 (run of 2026-12-02)"))
    assert not recipe.is_current(row(command=run.command.replace("--kd-layer 0", "--kd-layer 3")))
    old = recipe.run(recipe.experiment("student-l2-teacher"), 42)
    unseeded = old.command.replace(" --seed 42", "")  # rows from before --seed was explicit
    assert recipe.is_current(row(exp=old.name, seed=42, command=unseeded))
    assert not recipe.is_current(row(exp="student-l2-teacher-x", seed=42, command=unseeded))


def test_run_sh_hands_its_options_to_the_driver(tmp_path):
    """run.sh with ``echo`` as Python: stages 1-5 print the driver commands they would run."""
    env = dict(os.environ, PYTHON="echo")
    out = subprocess.run(
        ["bash", "egs/synth/run.sh", "--stage", "1", "--exp", str(tmp_path), "--groups",
         "seq-kd layerwise", "--seeds", "42 43", "--train-jobs", "2", "--exp-suffix", "-x",
         "--teacher-epochs", "20"],
        cwd=REPO, capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    calls = [shlex.split(line)[1:] for line in out.splitlines()
             if line.startswith("local/run_experiments.py")]  # fmt: skip
    parsed = [driver.get_parser().parse_args(driver._join_suffix(c)) for c in calls]
    assert [(a.only, a.steps) for a in parsed] == [
        (["teacher"], ["train"]),
        (["student-baseline"], ["train"]),
        ([], ["train"]),  # stage 4: the students of the groups
        ([], ["decode", "rows"]),  # stage 5 (--exp-suffix: not the teacher's row)
    ]
    for a in parsed:
        assert a.seeds == [42, 43] and a.teacher_epochs == 20 and a.exp_dir == str(tmp_path)
    assert parsed[2].groups == ["seq-kd", "layerwise"] and parsed[2].train_jobs == 2
    assert parsed[2].exclude == ["teacher", "student-baseline"] and parsed[2].exp_suffix == "-x"
    assert parsed[0].exp_suffix == ""


def test_run_sh_trains_the_baseline_beside_the_students_with_two_jobs(tmp_path):
    """--train-jobs 2 (the default): stage 1 trains the teacher alone (all threads), the
    baseline waits for stage 4 and trains there beside the MVQ-KD student; --train-jobs 1:
    stage 2 trains it alone."""

    def stages(*options):
        out = subprocess.run(
            ["bash", "egs/synth/run.sh", "--stage", "1", "--exp", str(tmp_path), *options],
            cwd=REPO, capture_output=True, text=True, check=True,
            env=dict(os.environ, PYTHON="echo"),
        ).stdout  # fmt: skip
        calls = [shlex.split(line)[1:] for line in out.splitlines()
                 if line.startswith("local/run_experiments.py")]  # fmt: skip
        return [driver.get_parser().parse_args(driver._join_suffix(c)) for c in calls]

    recipe = Recipe.load(REPO / "egs/synth/experiments.yaml")

    def trained(a):
        return [e.name for e in recipe.select(a.groups, a.only, a.exclude)]

    two = stages()
    assert [(trained(a), a.steps, a.train_jobs) for a in two] == [
        (["teacher"], ["train"], 1),
        (["student-baseline", "student-mvq-kd"], ["train"], 2),
        (["teacher"], ["decode", "rows"], 1),
        (["student-baseline", "student-mvq-kd"], ["decode", "rows"], 1),
    ]
    one = stages("--train-jobs", "1")
    assert [(trained(a), a.steps) for a in one] == [
        (["teacher"], ["train"]),
        (["student-baseline"], ["train"]),
        (["student-mvq-kd"], ["train"]),
        (["teacher", "student-baseline"], ["decode", "rows"]),
        (["student-mvq-kd"], ["decode", "rows"]),
    ]


FAKE_PROGRAMS = r'''#!/usr/bin/env python3
"""train.py / decode.py stand-in: writes what the real programs write, instantly."""
import json, sys
from pathlib import Path

args = sys.argv[1:]
exp = Path(args[args.index("--exp-dir") + 1])
if args[0] == "./train.py":
    epochs = int(args[args.index("--num-epochs") + 1])
    exp.mkdir(parents=True, exist_ok=True)
    (exp / f"epoch-{epochs}.pt").touch()
    kd = {"codebook_loss_scale": 0.1} if "--quantizer" in args else None
    summary = {"params": 1_886_000, "epochs": epochs, "train_seconds": 600, "distillation": kd}
    (exp / "train-summary.json").write_text(json.dumps(summary))
else:
    suffix = f"epoch-{args[args.index('--epoch') + 1]}-avg-{args[args.index('--avg') + 1]}"
    if "--streaming" in args:
        suffix += f"-{args[args.index('--streaming') + 1]}-chunk-4-left-16"
    (exp / "greedy_search").mkdir(exist_ok=True)
    for part, wer in (("test-clean", 50.0), ("test-other", 75.5)):
        wer += 1 if "chunked" in args else 0
        (exp / "greedy_search" / f"wer-summary-{part}-{suffix}.txt").write_text(
            f"settings\tWER\n{suffix}\t{wer}\n"
        )
'''


def test_train_decode_rows_end_to_end(tmp_path, drive):
    """The three steps with stand-ins of train.py and decode.py: rows in the csv, with the
    simulated-streaming WER of streaming models, and RESULTS.md rendered from them."""
    stub = tmp_path / "fake_python"
    stub.write_text(FAKE_PROGRAMS.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    stub.chmod(0o755)
    csv, md = tmp_path / "results.csv", tmp_path / "RESULTS.md"
    args = ("--groups", "main", "--seeds", "42", "43", "--python", str(stub))
    out = drive(tmp_path / "exp", *args, "--results-csv", str(csv), "--results-md", str(md))
    rows = read_rows(csv)
    assert [r.exp for r in rows] == ["teacher", "teacher-seed43", "student-baseline",
                                     "student-baseline-seed43", "student-mvq-kd",
                                     "student-mvq-kd-seed43"]  # fmt: skip
    mvq = rows[-1]
    assert (mvq.family, mvq.seed, mvq.streaming) == ("mvq", 43, True)
    assert mvq.teacher == f"teacher@{TEACHER_EPOCHS}"
    assert (mvq.test_clean, mvq.test_other, mvq.train_minutes) == (50.0, 75.5, 10)
    assert mvq.command.startswith(f"./train.py --exp-dir {tmp_path}/exp/student-mvq-kd-seed43 ")
    assert "regenerated" in out and md.read_text().startswith("# Results on the embedded")
    # Re-running skips what is done: no training, no decoding, the same rows.
    out = drive(tmp_path / "exp", *args, "--results-csv", str(csv), "--results-md", str(md))
    assert out.count("is trained, skipping") == 6 and "decoding " not in out
    assert read_rows(csv) == rows


def test_another_exp_dir_keeps_its_rows_beside_its_models(tmp_path, drive):
    """A smoke run (``run.sh --exp /tmp/x --teacher-epochs 2``) never replaces the measured
    rows of the recipe's own table: its rows go to ``<exp-dir>/results.csv``."""
    stub = tmp_path / "fake_python"
    stub.write_text(FAKE_PROGRAMS.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    stub.chmod(0o755)
    committed = (REPO / "egs/synth/results.csv").read_bytes()
    drive(tmp_path / "exp", "--only", "teacher", "--python", str(stub))
    assert [r.exp for r in read_rows(tmp_path / "exp/results.csv")] == ["teacher"]
    assert (tmp_path / "exp/RESULTS.md").exists()
    assert (REPO / "egs/synth/results.csv").read_bytes() == committed


@pytest.mark.parametrize(
    "change, error",
    [
        (("streaming: true, options: [small, streaming]", "streaming: false, options: "
          "[small, streaming]"), "streaming is False but its options say --causal true"),
        (("options: [small, streaming, mvq_kd]", "options: [small, streaming, mvq]"),
         "no option set mvq in option_sets"),
        (("teacher: teacher, needs: [mvq], options: [small, streaming, mvq_kd]",
          "needs: [mvq], options: [small, streaming, mvq_kd]"),
         "a distilled student names its teacher"),
        (("{kd_layer} --codebook", "{kd_layers} --codebook"), r"no value for \{kd_layers\}"),
        (("group: main, role: teacher,", "role: teacher,"), "'teacher': no group"),
    ],
)  # fmt: skip
def test_recipe_mistakes_are_explained(tmp_path, change, error):
    text = RECIPE.read_text()
    assert change[0] in text
    broken = tmp_path / "experiments.yaml"
    broken.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(RecipeError, match=error):
        Recipe.load(broken)
