"""Every command in README.md and docs/*.md runs as written.

The fenced shell blocks (```bash, ```sh, ```shell, ```console and unlabeled ones; blocks of
other languages, e.g. ```text, are not commands) of each page are split into commands,
and for each command of one of the repository's programs the test checks

1. that its options parse: Python programs through their own ``get_parser()``
   (``parse_args`` exiting is a failure), shell scripts against the ``options="..."`` list
   they hand to ``local/parse_options.sh`` (or the options their ``--help`` prints);
2. that the paths it reads are made by the commands before it on the same page (or are
   files of the repository): a small explicit model of what each program makes and reads
   (``PATH MODEL`` below). Generated trees (``data/``, ``download/``, ``egs/*/exp/``) are
   never taken from the disk, so a local run cannot hide a missing step.

Commands of other tools (pip, git, cd, ...) are skipped by name (``SKIPPED``); a command
that is neither is a failure, and so is a path the model cannot judge unless it is one
of the ``KNOWN_EXCEPTIONS`` (each with its reason).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def doc_pages() -> List[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# --------------------------------------------------------------------------- extraction

SHELL_LANGS = {"", "bash", "sh", "shell", "console"}


@dataclass
class Command:
    page: str  # e.g. docs/mvq-kd.md
    line: int  # line of the command in the page
    text: str  # as written (continuations joined)
    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def fenced_blocks(text: str):
    """(first line number of the body, language, body) of every fenced block."""
    blocks, lang, body, start = [], None, [], 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if lang is None:
            if stripped.startswith("```"):
                lang, body, start = stripped[3:].strip().lower(), [], n + 1
        elif stripped.startswith("```"):
            blocks.append((start, lang, "\n".join(body)))
            lang = None
        else:
            body.append(line)
    assert lang is None, "unclosed code fence"
    return blocks


def logical_lines(body: str, lang: str, start: int):
    """(line number, text) of each command line: continuations joined; for console
    blocks only the `$ ` lines (and their continuations)."""
    out, cur, cur_line = [], None, 0
    for n, line in enumerate(body.splitlines(), start):
        if cur is None:
            if lang == "console":
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
            cur, cur_line = "", n
        if cur:
            line = line.lstrip()
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1].rstrip() + " "
            continue
        out.append((cur_line, (cur + line).strip()))
        cur = None
    if cur is not None:
        out.append((cur_line, cur.strip()))
    return [(n, t) for n, t in out if t]


SEPARATORS = {"&&", "||", ";", "|", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def split_commands(body: str, lang: str, page: str = "<doc>", start: int = 1) -> List[Command]:
    commands = []
    for n, line in logical_lines(body, lang, start):
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        tokens = list(lex)
        segment: List[str] = []
        for tok in tokens + [";"]:
            if tok in SEPARATORS:
                env = {}
                while segment and ENV_ASSIGNMENT.match(segment[0]):
                    k, v = segment.pop(0).split("=", 1)
                    env[k] = v
                if segment:
                    commands.append(Command(page, n, line, segment, env))
                segment = []
            else:
                segment.append(tok)
    return commands


def page_commands(path: Path) -> List[Command]:
    page = str(path.relative_to(REPO))
    commands = []
    for start, lang, body in fenced_blocks(path.read_text()):
        if lang in SHELL_LANGS:
            commands += split_commands(body, lang, page, start)
    return commands


# ------------------------------------------------------------------------ classification

# Commands that are not the repository's programs, skipped on purpose.
SKIPPED = {
    "pip": "installs packages",
    "pip3": "installs packages",
    "git": "version control",
    "cd": "changes directory",
    "export": "sets the environment",
    ".": "activates a virtual environment",
    "source": "activates a virtual environment",
    "nvidia-smi": "lists GPUs",
    "ls": "lists files",
    "cat": "prints a file",
    "head": "prints a file",
    "tensorboard": "views training logs",
}
SKIPPED_PYTHON_MODULES = {"pytest": "the test suite itself", "venv": "makes a virtual environment"}
TORCHRUN_FLAGS = {"--standalone"}  # torchrun options without a value
SHELL_LAUNCHERS = {"bash", "sh"}
PYTHONS = {"python", "python3"}


@dataclass
class Program:
    kind: str  # "python" | "module" | "shell" | "skip"
    name: str  # repo path (local/x.py, egs/synth/run.sh) or module name
    args: List[str]
    why: str = ""


def norm_program(path: str) -> str:
    return path[2:] if path.startswith("./") else path


def classify(argv: List[str]) -> Program:
    """What a command runs; raises ValueError for one the test does not know."""
    head, rest = argv[0], argv[1:]
    if head == "torchrun":
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            i += 1 if (rest[i] in TORCHRUN_FLAGS or "=" in rest[i]) else 2
        if i >= len(rest):
            raise ValueError("torchrun without a program")
        return classify(rest[i:])
    if head in PYTHONS:
        if rest[:1] == ["-m"] and len(rest) >= 2:
            mod = rest[1]
            if mod in SKIPPED_PYTHON_MODULES:
                return Program("skip", mod, rest[2:], SKIPPED_PYTHON_MODULES[mod])
            if mod.split(".")[0] == "mvq_kd":
                return Program("module", mod, rest[2:])
            raise ValueError(f"python -m {mod}: not a module of the repository")
        if rest and rest[0].endswith(".py"):
            return classify(rest)
        raise ValueError("python without a program")
    if head in SHELL_LAUNCHERS and rest and rest[0].endswith(".sh"):
        return classify(rest)
    if head.endswith(".py") or head.endswith(".sh"):
        name = norm_program(head)
        if not (REPO / name).is_file():
            raise ValueError(f"{head}: no such program in the repository")
        return Program("python" if name.endswith(".py") else "shell", name, rest)
    if head in SKIPPED:
        return Program("skip", head, rest, SKIPPED[head])
    raise ValueError(f"{head}: neither a repository program nor in SKIPPED")


# ----------------------------------------------------------------------- option parsing


@functools.lru_cache(maxsize=None)
def load_python(name: str):
    """The module of a program (by its path) or of a ``python -m`` module."""
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(
            "_doc_" + re.sub(r"\W", "_", name[:-3]), REPO / name
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def parse_python(name: str, args: List[str]):
    """The parsed namespace, None for --help; raises ValueError if the options fail."""
    module = load_python(name)
    if not hasattr(module, "get_parser"):
        raise ValueError(f"{name} has no module-level get_parser()")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return module.get_parser().parse_args(args)
    except SystemExit as e:
        if e.code in (0, None):
            return None
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(e)
        raise ValueError(message) from None


@functools.lru_cache(maxsize=None)
def shell_options(name: str) -> frozenset:
    """The options a script accepts (underscored names)."""
    text = (REPO / name).read_text()
    m = re.search(r'^options="([^"]*)"', text, re.M)
    if m:
        return frozenset(m.group(1).split())
    out = subprocess.run(
        ["bash", str(REPO / name), "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    found = re.findall(r"^\s*--([a-z0-9][a-z0-9-]*)", out, re.M)
    assert found, f'{name}: no options="..." list and no options in --help'
    return frozenset(o.replace("-", "_") for o in found)


@functools.lru_cache(maxsize=None)
def shell_defaults(name: str) -> Dict[str, str]:
    """`name=value  # help` lines of a script (its declared defaults)."""
    defaults: Dict[str, str] = {}
    for key, value in re.findall(
        r"^([a-z_][a-z0-9_]*)=(\"[^\"]*\"|\S*)", (REPO / name).read_text(), re.M
    ):
        if key in shell_options(name) and key not in defaults:
            defaults[key] = value.strip('"')
    return defaults


def parse_shell(name: str, args: List[str]) -> Optional[Dict[str, str]]:
    """The option values (defaults filled in), None for --help; ValueError if they fail."""
    values = dict(shell_defaults(name))
    options = shell_options(name)
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-h", "--help"):
            return None
        if not a.startswith("--"):
            raise ValueError(f"unexpected argument {a!r}")
        key = a[2:].replace("-", "_")
        if key not in options:
            raise ValueError(f"unknown option {a}")
        if i + 1 >= len(args):
            raise ValueError(f"option {a} needs a value")
        values[key] = args[i + 1]
        i += 2
    return values


# --------------------------------------------------------------------------- PATH MODEL

# Trees made by the recipes: never taken from the disk, only from earlier commands.
GENERATED = re.compile(r"^(data|download|egs/[^/]+/exp)(/|$)")

# Paths the model cannot judge, with the reason. Matched as prefixes.
KNOWN_EXCEPTIONS = {
    "/path/to/": "a location on the user's machine (LibriSpeech download, HuBERT checkpoint)",
}
# Programs whose reads and makes are not modelled, with the reason.
UNMODELLED = {
    "egs/librispeech/run.sh": "the GPU recipe reads the user's --dl-dir and --hubert and "
    "makes its own data/librispeech and egs/librispeech/exp trees (options checked only)",
}


class World:
    """What the commands of one page have made so far."""

    def __init__(self):
        self.made: set = set()

    @staticmethod
    def norm(path) -> str:
        p = str(path)
        while p.startswith("./"):
            p = p[2:]
        return p.rstrip("/")

    def make(self, *paths) -> None:
        self.made.update(self.norm(p) for p in paths)

    def has(self, path) -> bool:
        p = self.norm(path)
        if p in self.made or any(m.startswith(p + "/") for m in self.made):
            return True
        return not GENERATED.match(p) and not p.startswith("/") and (REPO / p).exists()

    def missing(self, paths) -> List[str]:
        out = []
        for p in paths:
            if any(self.norm(p).startswith(k) for k in KNOWN_EXCEPTIONS):
                continue
            if not self.has(p):
                out.append(self.norm(p))
        return out


def checkpoints(exp, last: int, avg: int = 1) -> List[str]:
    return [f"{exp}/epoch-{e}.pt" for e in range(max(1, last - avg + 1), last + 1)]


def teacher_reads(kind: str, model, epoch, avg) -> List[str]:
    if not model:
        return []
    if kind == "hf":  # a transformers folder or fairseq checkpoint (a hub name: an exception)
        return [model]
    if int(epoch) <= 0:
        raise ValueError("a train.py teacher needs --teacher-epoch")
    return checkpoints(model, int(epoch), int(avg))


# corpus -> (prefix, training parts, evaluation parts, unlabeled parts, teacher-only parts)
def corpus_parts(v: Dict[str, str]):
    if v["corpus"] == "lhotse":
        evals = v.get("dev_parts", "").split() + v.get("test_parts", "").split()
        return v["prefix"], v.get("train_parts", "").split(), evals, [], []
    if v["corpus"] == "synth":
        evals = ["dev", "test-clean", "test-other"]
        return "synth", ["train"], evals, ["train-unlabeled"], ["train-teacher"]
    train = ["train-clean-100"]
    if v.get("full_libri") == "true":
        train += ["train-clean-360", "train-other-500"]
    evals = ["dev-clean", "dev-other", "test-clean", "test-other"]
    return "librispeech", train, evals, v.get("unlabeled_libri", "").split(), []


def prepare_stages(v: Dict[str, str]):
    """(stage, reads, makes) of ./prepare.sh with option values v."""
    prefix, train, evals, unlabeled, teacher_only = corpus_parts(v)
    if v.get("parts"):  # --parts: the recipe's parts named there, and the others
        chosen = v["parts"].split()
        known = train + evals + unlabeled + teacher_only
        train, evals, unlabeled, teacher_only = (
            [p for p in ps if p in chosen] for ps in (train, evals, unlabeled, teacher_only)
        )
        train += [p for p in chosen if p not in known and p.startswith("train")]
        evals += [p for p in chosen if p not in known and not p.startswith("train")]
    data = v.get("data_dir") or f"data/{prefix}"
    man, fb = f"{data}/manifests", f"{data}/fbank"
    lang = f"{data}/lang_bpe_{v['vocab_size']}"
    mvq = v.get("mvq_dir") or f"{data}/mvq"
    nb_in, nb_out = v.get("nbest_input_dir") or fb, v.get("nbest_dir") or f"{data}/nbest"
    parts = train + evals + unlabeled + teacher_only
    labeled = train + unlabeled

    def teacher():
        return teacher_reads(
            v["teacher_kind"], v["teacher_model"], v["teacher_epoch"], v["teacher_avg"]
        )

    def cuts(d, ps):
        return [f"{d}/{prefix}_cuts_{p}.jsonl.gz" for p in ps]

    corpus_dir = f"{v['dl_dir']}/" + ("SynthSpeech" if prefix == "synth" else "LibriSpeech")
    if v["corpus"] == "lhotse":
        corpus_dir = v["src_manifest_dir"]  # the user's manifests: given
    stages = {
        0: lambda: ([], [corpus_dir]),  # synthesized, the missing parts downloaded, or given
        1: lambda: (
            [corpus_dir],
            [
                f"{man}/{prefix}_{k}_{p}.jsonl.gz"
                for p in parts
                for k in ("recordings", "supervisions")
            ],
        ),
        2: lambda: ([f"{man}/{prefix}_recordings_{p}.jsonl.gz" for p in parts], cuts(fb, parts)),
        3: lambda: (
            [],
            [f"{fb}/noise_cuts_all.jsonl.gz"]
            if prefix == "synth"
            else ([f"{fb}/musan_cuts_all.jsonl.gz"] if v.get("musan") == "true" else []),
        ),
        4: lambda: (
            [f"{man}/{prefix}_supervisions_{p}.jsonl.gz" for p in train],
            [f"{lang}/bpe.model", f"{lang}/tokens.txt"] if train else [],
        ),
        5: lambda: (cuts(fb, train) + teacher(), [f"{mvq}/embeddings.pt"]),
        6: lambda: ([f"{mvq}/embeddings.pt"], [f"{mvq}/quantizer.pt"]),
        7: lambda: (cuts(fb, labeled) + [f"{mvq}/quantizer.pt"] + teacher(), cuts(mvq, labeled)),
        8: lambda: (
            cuts(nb_in, labeled) + [f"{lang}/bpe.model"] + teacher(),
            cuts(nb_out, labeled),
        ),
    }
    for s in range(int(v["stage"]), min(int(v["stop_stage"]), 8) + 1):
        reads, makes = stages[s]()
        yield s, reads, makes


def effects_prepare(v, world: World):
    for _, reads, makes in prepare_stages(v):
        yield reads, makes


def attr(ns, name, default=None):
    return getattr(ns, name, default)


def effects_train(ns, world: World):
    exp, prefix = ns.exp_dir, attr(ns, "prefix", "synth")
    md = ns.manifest_dir
    td = attr(ns, "train_manifest_dir") or md
    reads = [ns.bpe_model]
    reads += [f"{td}/{prefix}_cuts_{p}.jsonl.gz" for p in attr(ns, "train_parts", ["train"])]
    reads += [f"{td}/{prefix}_cuts_{p}.jsonl.gz" for p in attr(ns, "unlabeled_parts") or []]
    reads += [f"{md}/{prefix}_cuts_{p}.jsonl.gz" for p in attr(ns, "valid_parts", ["dev"])]
    reads += [p for p in (attr(ns, "musan"), attr(ns, "quantizer")) if p]
    if attr(ns, "teacher_model"):
        reads += teacher_reads(
            "conformer", ns.teacher_model, attr(ns, "teacher_epoch", 0), attr(ns, "teacher_avg", 1)
        )
    start = attr(ns, "start_epoch", 1)
    if start > 1:
        reads.append(f"{exp}/epoch-{start - 1}.pt")
    yield reads, [f"{exp}/epoch-{e}.pt" for e in range(start, ns.num_epochs + 1)]


def effects_decode(ns, world: World):
    prefix = attr(ns, "prefix", "synth")
    reads = checkpoints(ns.exp_dir, ns.epoch, ns.avg) + [ns.bpe_model]
    reads += [f"{ns.manifest_dir}/{prefix}_cuts_{p}.jsonl.gz" for p in ns.test_parts]
    yield reads, []


def effects_export(ns, world: World):
    out = ns.out_dir or f"{ns.exp_dir}/onnx"
    graphs = ["encoder", "decoder", "joiner"]
    if ns.int8:
        graphs += [f"{g}.int8" for g in graphs]
    makes = [f"{out}/{g}.onnx" for g in graphs] + [f"{out}/tokens.txt", f"{out}/config.json"]
    yield checkpoints(ns.exp_dir, ns.epoch, ns.avg) + [ns.bpe_model], makes


def effects_onnx_pretrained(ns, world: World):
    suffix = ".int8.onnx" if ns.int8 else ".onnx"
    graphs = [f"{ns.model_dir}/{g}{suffix}" for g in ("encoder", "decoder", "joiner")]
    yield graphs + [f"{ns.model_dir}/tokens.txt"] + [str(f) for f in ns.files], []


def effects_codebook_indexes(ns, world: World):
    cuts = lambda d: [f"{d}/{ns.prefix}_cuts_{p}.jsonl.gz" for p in ns.parts]  # noqa: E731
    reads = cuts(ns.manifest_dir) + [ns.quantizer]
    reads += teacher_reads(ns.teacher_kind, ns.teacher_model, ns.teacher_epoch, ns.teacher_avg)
    yield reads, cuts(ns.output_dir)


def effects_of_command(command: str, world: World):
    """The effects of a command that a program runs itself (the driver's train.py and
    decode.py commands): its options parse, then its own path model."""
    prog = classify(shlex.split(command))
    try:
        values = parse_python(prog.name, prog.args)
    except ValueError as e:
        raise ValueError(f"runs {command}\n    whose options fail: {e}") from None
    yield from PYTHON_EFFECTS[prog.name](values, world)


def effects_driver(ns, world: World):
    """local/run_experiments.py: the runs of the experiment matrix it selects, each
    through the path model of the train.py and decode.py commands it would run."""
    if ns.list or ns.print_needs or ns.dry_run:
        return
    ex = importlib.import_module("mvq_kd.experiments")
    recipe = ex.Recipe.load(REPO / ns.recipe)
    overrides = dict(s.split("=", 1) for s in ns.set)
    for key in ("exp_dir", "teacher_epochs", "student_epochs", "avg"):
        if getattr(ns, key) is not None:
            overrides[key] = getattr(ns, key)
    recipe = recipe.with_settings(overrides)
    runs = recipe.runs(recipe.select(ns.groups, ns.only, ns.exclude), ns.seeds, ns.exp_suffix)
    if "train" in ns.steps:
        for run in runs:
            yield from effects_of_command(run.command, world)
    if "decode" in ns.steps:
        for run in runs:
            for mode in run.decode_modes():
                yield from effects_of_command(run.decode_command(mode), world)


# egs/synth/run.sh: the driver's runs and prepare.sh's stages, as its stages call them.
SYNTH_MAIN_MODELS = ["teacher", "student-baseline"]  # its stages 1 and 2; students: 3-5


def effects_synth_run(v, world: World):
    driver = "local/run_experiments.py"
    settings = ["--exp-dir", v["exp"], "--teacher-epochs", v["teacher_epochs"],
                "--student-epochs", v["student_epochs"], "--avg", v["avg"],
                "--seeds", *v["seeds"].split()]  # fmt: skip
    stage, stop = int(v["stage"]), int(v["stop_stage"])
    # --train-jobs >= 2: the baseline trains in stage 4 beside the students of group main
    defer = (int(v["train_jobs"]) >= 2 and stage <= 2 and stop >= 4 and not v["only"].split()
             and not v["exp_suffix"] and {"main", "all"} & set(v["groups"].split()))  # fmt: skip
    excluded = ["teacher"] if defer else SYNTH_MAIN_MODELS
    students = ["--groups", *v["groups"].split()]
    students += ["--only", *v["only"].split()] if v["only"].split() else []
    students += ["--exclude", *excluded, f"--exp-suffix={v['exp_suffix']}"]

    def drive(*args):
        return effects_driver(parse_python(driver, settings + list(args)), world)

    teacher = {
        "teacher_kind": "conformer", "teacher_model": f"{v['exp']}/teacher",
        "teacher_epoch": v["teacher_epochs"], "teacher_avg": v["avg"],
    }  # fmt: skip
    prep = dict(shell_defaults("prepare.sh"), corpus="synth", vocab_size="64", **teacher)
    for s in range(stage, min(stop, 5) + 1):
        if s == 0:
            yield from effects_prepare(dict(prep, stage="0", stop_stage="4"), world)
        elif s == 1:
            yield from drive("--only", "teacher", "--steps", "train")
        elif s == 2 and not defer:
            yield from drive("--only", "student-baseline", "--steps", "train")
        elif s == 3:
            ns = parse_python(driver, settings + students)
            ex = importlib.import_module("mvq_kd.experiments")
            recipe = ex.Recipe.load(REPO / ns.recipe)
            needs = recipe.needs(recipe.select(ns.groups, ns.only, ns.exclude))
            if "mvq" in needs:  # --parts train: no experiment reads train-unlabeled's
                yield from effects_prepare(
                    dict(prep, stage="5", stop_stage="7", parts="train"), world
                )
            for need, source in (("nbest", "data/synth/fbank"), ("mvq-nbest", "data/synth/mvq")):
                if need in needs:
                    parts = "train" if need == "mvq-nbest" else ""
                    yield from effects_prepare(
                        dict(prep, stage="8", stop_stage="8", nbest_input_dir=source,
                             nbest_dir=f"data/synth/{need}", parts=parts), world)  # fmt: skip
        elif s == 4:
            yield from drive(*students, "--steps", "train")
        elif s == 5:
            if not v["exp_suffix"]:
                yield from drive("--only", *excluded, "--steps", "decode", "rows")
            yield from drive(*students, "--steps", "decode", "rows")


PYTHON_EFFECTS = {
    "train.py": effects_train,
    "decode.py": effects_decode,
    "export.py": effects_export,
    "onnx_pretrained.py": effects_onnx_pretrained,
    "local/compute_codebook_indexes.py": effects_codebook_indexes,
    "local/run_experiments.py": effects_driver,
}
SHELL_EFFECTS = {
    "prepare.sh": effects_prepare,
    "egs/synth/run.sh": effects_synth_run,
}


# ------------------------------------------------------------------------------ checker


def check_commands(commands: List[Command]) -> List[str]:
    """Problems of the commands of one page, in order (empty: all run as written)."""
    problems, world = [], World()
    for cmd in commands:
        try:
            prog = classify(cmd.argv)
        except ValueError as e:
            problems.append(f"{cmd.where()}\n    {e}")
            continue
        if prog.kind == "skip":
            continue
        try:
            if prog.kind == "shell":
                values = parse_shell(prog.name, prog.args)
                effects = SHELL_EFFECTS.get(prog.name)
            else:
                values = parse_python(prog.name, prog.args)
                effects = PYTHON_EFFECTS.get(prog.name)
        except ValueError as e:
            problems.append(f"{cmd.where()}\n    options: {e}")
            continue
        if values is None:  # --help
            continue
        if effects is None:
            if prog.name not in UNMODELLED:
                problems.append(
                    f"{cmd.where()}\n    no path model for {prog.name}: "
                    "add one or list it in UNMODELLED"
                )
            continue
        try:
            for reads, makes in effects(values, world):
                lost = world.missing(reads)
                if lost:
                    problems.append(
                        f"{cmd.where()}\n    reads what no earlier command made: {', '.join(lost)}"
                    )
                world.make(*makes)
        except ValueError as e:
            problems.append(f"{cmd.where()}\n    {e}")
    return problems


# --------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_command_runs_as_written(page):
    commands = page_commands(page)
    problems = check_commands(commands)
    assert not problems, "\n".join(problems)


def test_readme_is_a_manual_of_at_most_250_lines():
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


def test_docs_pages_exist_and_are_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in ("mvq-kd", "layerwise-kd", "sequence-kd", "data", "recipes"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name
        assert f"docs/{name}.md" in readme, f"README.md does not link docs/{name}.md"


def test_relative_links_of_the_docs_exist():
    for page in doc_pages():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            assert (page.parent / target).exists(), (
                f"{page.relative_to(REPO)}: broken link {target}"
            )


# The checker itself: it must catch what it is for.

BLOCK = """\
# a comment
OMP_NUM_THREADS=1 ./prepare.sh --corpus synth --vocab-size 64 --nj 2
./train.py --exp-dir egs/synth/exp/x --num-epochs 2 \\
    --bpe-model data/synth/lang_bpe_64/bpe.model
./decode.py --exp-dir egs/synth/exp/x --epoch 2 --avg 2 \\
    --bpe-model data/synth/lang_bpe_64/bpe.model && pip install foo
"""


def test_split_commands_joins_continuations_and_strips_env_and_comments():
    cmds = split_commands(BLOCK, "bash")
    assert [c.argv[0] for c in cmds] == ["./prepare.sh", "./train.py", "./decode.py", "pip"]
    assert cmds[0].env == {"OMP_NUM_THREADS": "1"}
    assert cmds[1].argv[-2:] == ["--bpe-model", "data/synth/lang_bpe_64/bpe.model"]
    console = "$ ./decode.py --help\nusage: decode.py ...\n"
    assert [c.argv for c in split_commands(console, "console")] == [["./decode.py", "--help"]]


def test_a_consistent_block_passes():
    assert check_commands(split_commands(BLOCK, "bash")) == []


def test_a_wrong_option_of_a_python_program_fails():
    bad = BLOCK.replace("--num-epochs 2", "--num-epochs 2 --no-such-option 1")
    problems = check_commands(split_commands(bad, "bash"))
    assert problems and "--no-such-option" in problems[0]


def test_a_wrong_option_of_a_shell_script_fails():
    bad = BLOCK.replace("--vocab-size 64", "--vocab-sise 64")
    problems = check_commands(split_commands(bad, "bash"))
    assert any("unknown option --vocab-sise" in p for p in problems)


def test_a_path_read_before_it_is_made_fails():
    # the BPE model of another vocabulary: nothing made it
    train = BLOCK.split("\n")[2:4]
    bad = BLOCK.replace("\n".join(train), "\n".join(train).replace("bpe_64", "bpe_256"))
    problems = check_commands(split_commands(bad, "bash"))
    assert len(problems) == 1 and "lang_bpe_256/bpe.model" in problems[0]
    # decoding epochs that were never trained
    bad = BLOCK.replace("--epoch 2 --avg 2", "--epoch 12 --avg 3")
    problems = check_commands(split_commands(bad, "bash"))
    assert len(problems) == 1 and "egs/synth/exp/x/epoch-10.pt" in problems[0]


def test_stage_ranges_decide_what_prepare_makes():
    block = "./prepare.sh --corpus synth --vocab-size 64 --stop-stage 3\n" + BLOCK.split("\n", 2)[2]
    problems = check_commands(split_commands(block, "bash"))
    assert problems and all("lang_bpe_64/bpe.model" in p for p in problems)
    # manifests of a corpus that stage 0 did not make
    problems = check_commands(split_commands("./prepare.sh --corpus synth --stage 1", "bash"))
    assert problems and "download/SynthSpeech" in problems[0]


def test_unknown_commands_fail_and_others_are_skipped_explicitly():
    problems = check_commands(
        split_commands("make all\npip install -e .\npython -m pytest -q tests", "bash")
    )
    assert len(problems) == 1 and "make" in problems[0]


def test_the_recipe_model_follows_its_stages_and_the_experiment_matrix():
    # stage 3 makes the N-best lists the seq-kd students read; skipping it is caught
    ok = "egs/synth/run.sh --stop-stage 2\negs/synth/run.sh --stage 3 --groups seq-kd\n"
    assert check_commands(split_commands(ok, "bash")) == []
    bad = ok.replace("--stage 3", "--stage 4")
    problems = check_commands(split_commands(bad, "bash"))
    assert problems and all("data/synth/nbest/" in p for p in problems)
    # students of a teacher checkpoint that was never trained
    bad = ok.replace("--stage 3", "--stage 3 --teacher-epochs 20")
    problems = check_commands(split_commands(bad, "bash"))
    assert problems and "egs/synth/exp/teacher/epoch-20.pt" in problems[0]
    # the driver's own options
    problems = check_commands(split_commands("local/run_experiments.py --group main", "bash"))
    assert problems and "--group" in problems[0]


def test_launchers_are_seen_through():
    argv = shlex.split("torchrun --nproc-per-node 4 --standalone train.py --exp-dir x")
    assert (classify(argv).name, classify(argv).args) == ("train.py", ["--exp-dir", "x"])
    argv = shlex.split("python3 ./decode.py --help")
    assert (classify(argv).kind, classify(argv).name) == ("python", "decode.py")
    assert classify(shlex.split("bash egs/synth/run.sh --stage 1")).name == "egs/synth/run.sh"
    assert classify(shlex.split("python -m pytest -q tests")).kind == "skip"
    with pytest.raises(ValueError):
        classify(shlex.split("python -m json.tool x"))
