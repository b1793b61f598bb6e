"""The recipes' commands: every train.py / decode.py command that
egs/librispeech/run.sh prints (--dry-run) parses with the programs' own options."""

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
