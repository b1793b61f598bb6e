"""The recipes' commands: every train.py / decode.py command that
egs/librispeech/run.sh prints (--dry-run) parses with the programs' own options; every
train.py command of egs/synth/run.sh parses, and an interrupted training resumes."""

import os
import shlex
import subprocess

import decode as decode_cli
import train as train_cli
from tests.conftest import REPO


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


def synth_run(exp, *args, python="echo", check=True) -> subprocess.CompletedProcess:
    """egs/synth/run.sh with ``echo`` as the Python interpreter: each training writes its
    command line to ``<exp>/<name>/train.log`` instead of running."""
    env = dict(os.environ, PYTHON=python)
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run(
        ["bash", "egs/synth/run.sh", "--exp", str(exp), *args],
        cwd=REPO, capture_output=True, text=True, check=check, env=env,
    )  # fmt: skip


def test_synth_commands_parse(tmp_path):
    synth_run(tmp_path, "--stage", "1", "--stop-stage", "2")
    synth_run(tmp_path, "--stage", "6", "--stop-stage", "6", "--all", "true")
    parser = train_cli.get_parser()
    logs = sorted(tmp_path.glob("*/train.log"))
    # Teacher, streaming baseline, MVQ-KD, 6 frame-level baselines, 4 layer-wise,
    # 7 sequence-level, 6 combined (MVQ-KD or L2 + layer-wise + sequence-level, L2 +
    # sequence-level on the unlabeled split; streaming or not).
    assert len(logs) == 2 + 1 + 6 + 4 + 7 + 6
    for log in logs:
        (cmd,) = [shlex.split(line) for line in log.read_text().splitlines()]
        args = parser.parse_args(cmd[1:])  # exits on an unknown option
        assert args.exp_dir == tmp_path / log.parent.name
        assert args.num_epochs == 10 and args.start_epoch == 1
        if log.parent.name.endswith("combined-l2-unlabeled"):  # pseudo labels: unlabeled only
            assert args.pseudo_labels == "nbest" and args.ground_truth_weight == 1
            assert args.unlabeled_parts == ["train-unlabeled"] and args.unlabeled_ratio == 0.5
            assert args.embedding_source == "teacher" and args.feature_loss_scale == 0
            assert args.attention_loss_scale == args.apc_loss_scale == 0  # no layer-wise KD
        elif "combined" in log.parent.name:  # all three families in one run
            assert args.pseudo_labels == "nbest" and args.layerwise_connections == 2
            if "combined-l2" in log.parent.name:
                assert args.embedding_source == "teacher" and args.quantizer is None
            else:
                assert args.quantizer is not None


def test_synth_training_resumes_after_last_epoch(tmp_path):
    teacher = tmp_path / "teacher"
    stage1 = ("--stage", "1", "--stop-stage", "1")
    synth_run(tmp_path, *stage1)
    first = (teacher / "train.log").read_text()
    assert "--start-epoch" not in first
    for n in (1, 2, 3):  # an interrupted run: epochs 1-3 saved
        (teacher / f"epoch-{n}.pt").touch()
    out = synth_run(tmp_path, *stage1).stdout
    assert f"resuming after {teacher}/epoch-3.pt" in out
    lines = (teacher / "train.log").read_text().splitlines()
    assert lines[0] == first.strip()  # appended, not overwritten
    assert lines[1] == first.strip() + " --start-epoch 4"
    (teacher / "epoch-10.pt").touch()
    assert "teacher is trained, skipping" in synth_run(tmp_path, *stage1).stdout
    assert len((teacher / "train.log").read_text().splitlines()) == 2


def test_synth_students_train_in_parallel_jobs(tmp_path):
    stub = tmp_path / "python"  # records its arguments and thread count, takes a while
    stub.write_text('#!/usr/bin/env bash\necho "$* threads=$OMP_NUM_THREADS"; sleep 0.5\n')
    stub.chmod(0o755)
    args = ("--stage", "6", "--stop-stage", "6", "--seq-kd", "true", "--train-jobs", "2")
    out = synth_run(tmp_path / "exp", *args, python=str(stub)).stdout
    assert out.count("in the background, one thread") == 9  # MVQ-KD + 8
    logs = sorted((tmp_path / "exp").glob("*/train.log"))
    assert len(logs) == 9
    assert all(log.read_text().strip().endswith("threads=1") for log in logs)

    stub.write_text("#!/usr/bin/env bash\nexit 3\n")  # a failing training stops the stage
    proc = synth_run(tmp_path / "exp2", *args, python=str(stub), check=False)
    assert proc.returncode != 0 and "Done" not in proc.stdout


def test_synth_students_again_from_another_teacher_checkpoint(tmp_path):
    synth_run(tmp_path, "--stage", "6", "--stop-stage", "6", "--combined", "true",
              "--teacher-epochs", "20", "--exp-suffix", "-teacher-epoch20",
              "--students", "student-combined-l2-light")  # fmt: skip
    (log,) = tmp_path.glob("*/train.log")
    assert log.parent.name == "student-combined-l2-light-teacher-epoch20"
    args = train_cli.get_parser().parse_args(shlex.split(log.read_text())[1:])
    assert args.exp_dir == log.parent and args.teacher_epoch == 20
