"""The command lines of every program: one ``get_parser()`` each, every option explained,
defaults shown, abbreviations refused, and the options of the configs declared once (in
the dataclasses of :mod:`mvq_kd.cli` options) with the dataclasses' defaults.

Programs are discovered: ``train.py``, ``decode.py`` and every ``*.py`` under ``local/``
and ``egs/`` that defines ``get_parser``, so a new program is covered too.
"""

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from mvq_kd.cli import add_config_args, config_from_args, flag_of, make_parser, option
from tests.conftest import REPO


def discover_programs() -> List[Path]:
    top = [REPO / n for n in ("train.py", "decode.py", "export.py", "onnx_pretrained.py")]
    found = [*top, *sorted((REPO / "local").glob("*.py"))]
    found += [p for p in sorted((REPO / "egs").rglob("*.py")) if "def get_parser" in p.read_text()]
    return found


PROGRAMS = discover_programs()


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"cli_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.fixture(scope="module")
def train_cli():
    return load(REPO / "train.py")


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_program_has_a_documented_strict_parser(path):
    module = load(path)
    assert hasattr(module, "get_parser"), f"{path.name} has no module-level get_parser()"
    parser = module.get_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.allow_abbrev is False, f"{path.name} accepts abbreviated options"
    formatter = parser.formatter_class(prog=path.name)
    for action in options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{path.name}: {name} has no help"
        if not action.required:
            assert "%(default)" in formatter._get_help_string(action), (
                f"{path.name}: --help does not show the default of {name}"
            )
    text = parser.format_help()  # every help string formats (e.g. no stray %)
    assert "(default:" in text or all(a.required for a in options(parser))


def test_abbreviations_are_errors(train_cli, capsys):
    parser = train_cli.get_parser()
    base = ["--exp-dir", "x", "--bpe-model", "y"]
    assert parser.parse_args(base + ["--num-epochs", "3"]).num_epochs == 3
    with pytest.raises(SystemExit) as e:
        parser.parse_args(base + ["--num-epoch", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --num-epoch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)],
)
def test_bool_options_take_true_false_values(train_cli, value, expected):
    args = train_cli.get_parser().parse_args(
        ["--exp-dir", "x", "--bpe-model", "y", "--causal", value]
    )
    assert args.causal is expected


def test_bool_option_rejects_other_values(train_cli, capsys):
    with pytest.raises(SystemExit):
        train_cli.get_parser().parse_args(["--exp-dir", "x", "--bpe-model", "y", "--causal", "on"])
    assert "expected true/false" in capsys.readouterr().err


def config_fields(cfg):
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if "cli" in f.metadata}


def test_config_round_trip_keeps_the_dataclass_defaults(train_cli, tiny_data, tmp_path):
    from mvq_kd.config import OptimConfig, TrainConfig
    from mvq_kd.dataset import DataConfig
    from mvq_kd.kd.frame import FrameKdConfig
    from mvq_kd.kd.layerwise import LayerwiseKdConfig
    from mvq_kd.kd.sequence import SequenceKdConfig
    from mvq_kd.loss import LossConfig
    from mvq_kd.model.encoder import EncoderConfig
    from mvq_kd.model.transducer import TransducerConfig

    bpe = tiny_data["bpe_model"]
    args = train_cli.get_parser().parse_args(["--exp-dir", str(tmp_path), "--bpe-model", str(bpe)])
    cfg = train_cli.build_config(args)
    defaults = {
        "encoder": (cfg.model.encoder, EncoderConfig()),
        "model": (cfg.model, TransducerConfig(EncoderConfig(), vocab_size=cfg.model.vocab_size)),
        "data": (cfg.data, DataConfig([], [])),
        "optim": (cfg.optim, OptimConfig()),
        "loss": (cfg.loss, LossConfig()),
        "frame_kd": (cfg.frame_kd, FrameKdConfig()),
        "layerwise_kd": (cfg.layerwise_kd, LayerwiseKdConfig()),
        "sequence_kd": (cfg.sequence_kd, SequenceKdConfig()),
    }
    for name, (built, default) in defaults.items():
        assert config_fields(built) == config_fields(default), name
    top = {f.name: f.default for f in dataclasses.fields(TrainConfig) if "cli" in f.metadata}
    del top["exp_dir"], top["bpe_model"]  # required: no default
    assert {k: v for k, v in config_fields(cfg).items() if k in top} == top
    assert (cfg.exp_dir, cfg.bpe_model, cfg.teacher) == (tmp_path, bpe, None)
    assert cfg.data.train_cuts == [Path("data/synth/fbank/synth_cuts_train.jsonl.gz")]
    assert cfg.model.ctc_head is False and cfg.frame_kd.quantizer_id is None


def test_augmentation_options_parse(train_cli, tiny_data, tmp_path):
    base = ["--exp-dir", str(tmp_path), "--bpe-model", str(tiny_data["bpe_model"])]
    extra = ["--musan-prob", "0.8", "--musan-snr", "0", "20", "--tempo-perturb", "0.1"]
    extra += ["--musan-warmup-epochs", "1", "--musan-warmup-prob", "0.4"]
    extra += ["--musan-warmup-snr", "15", "25"]
    d = train_cli.build_config(train_cli.get_parser().parse_args(base + extra)).data
    assert (d.musan_prob, d.musan_snr, d.tempo_perturb) == (0.8, (0.0, 20.0), 0.1)
    assert (d.musan_warmup_epochs, d.musan_warmup_prob, d.musan_warmup_snr) == (1, 0.4, (15, 25))
    with pytest.raises(SystemExit):  # two numbers or none
        train_cli.get_parser().parse_args(base + ["--musan-snr", "5"])


def test_config_options_are_declared_only_in_the_configs():
    """train.py adds by hand only the options that are not config fields."""
    from mvq_kd.config import OptimConfig, TrainConfig
    from mvq_kd.dataset import DataConfig
    from mvq_kd.kd.frame import FrameKdConfig
    from mvq_kd.kd.layerwise import LayerwiseKdConfig
    from mvq_kd.kd.sequence import SequenceKdConfig
    from mvq_kd.loss import LossConfig
    from mvq_kd.model.encoder import EncoderConfig
    from mvq_kd.model.transducer import TransducerConfig
    from mvq_kd.teacher import TeacherSpec

    configs = (
        TrainConfig, DataConfig, EncoderConfig, TransducerConfig, OptimConfig, LossConfig,
        FrameKdConfig, LayerwiseKdConfig, SequenceKdConfig, TeacherSpec,
    )  # fmt: skip
    flags = {flag_of(f) for c in configs for f in dataclasses.fields(c) if "cli" in f.metadata}
    source = (REPO / "train.py").read_text()
    by_hand = set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", source))
    assert by_hand, "train.py's own options were not found"
    assert not by_hand & flags, f"declared twice: {sorted(by_hand & flags)}"


def test_cli_helpers(capsys):
    @dataclasses.dataclass
    class Demo:
        size: int = option(3, "a size")
        names: Tuple[str, ...] = option((), "names", nargs="*")
        flag: bool = option(False, "a flag", flag="--on")
        mode: str = option("a", "a mode", choices=("a", "b"))
        auto: Optional[bool] = option(None, "tri-state")

    with pytest.raises(ValueError, match="help"):
        option(1)
    p = make_parser("demo")
    add_config_args(p, Demo, "demo", required=("size",))
    args = p.parse_args(["--size", "5", "--names", "x", "y", "--on", "yes"])
    assert config_from_args(Demo, args) == Demo(5, ("x", "y"), True, "a", None)
    assert p.parse_args(["--size", "1", "--auto", "false"]).auto is False
    with pytest.raises(SystemExit):
        p.parse_args(["--names", "x"])  # --size is required here
    with pytest.raises(SystemExit):
        p.parse_args(["--size", "1", "--mode", "c"])
    assert "(default: a)" in " ".join(p.format_help().split())
