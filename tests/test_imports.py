"""The package's structure: imports layered without cycles, the programs away from the
trainer, and files of a readable size.

The import graph is read statically (``ast`` over every file of ``mvq_kd``, function-level
imports included), so a cycle hidden in a lazy import fails as well.

Layers, lowest first: primitives (no other layer), building blocks (model, kd, data,
loss, checkpoint, teacher, ...), pipelines (trainer, evaluate, codebooks, nbest, ...),
programs (``train.py``, ``decode.py``, ``local/``).
"""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "mvq_kd"
PRIMITIVES = {
    "mvq_kd.utils",
    "mvq_kd.cli",
    "mvq_kd.fields",
    "mvq_kd.device",
    "mvq_kd.rnnt",
    "mvq_kd.quantization",
}
PIPELINES = {
    "mvq_kd.trainer",
    "mvq_kd.evaluate",
    "mvq_kd.codebooks",
    "mvq_kd.nbest",
    "mvq_kd.experiments",
    "mvq_kd.results",
}
MAX_LINES = 800
MAX_TRAINER_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: Set[str], name: Optional[str] = None) -> Set[str]:
    """The ``known`` modules that the file imports anywhere (top level or in functions).

    ``from a import b`` imports ``a`` and, when ``a.b`` is a module, ``a.b`` too.
    """
    found = set()
    package = name if path.name == "__init__.py" else (name or "").rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found & known


def import_graph() -> Dict[str, Set[str]]:
    modules = package_modules()
    return {m: imported_modules(p, set(modules), m) - {m} for m, p in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """A cycle ``[a, b, ..., a]`` of the directed graph, or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def reachable(graph: Dict[str, Set[str]], start: Set[str]) -> Set[str]:
    seen, todo = set(), list(start)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def programs() -> List[Path]:
    """Every program but train.py (which runs the trainer)."""
    return [REPO / "decode.py", *sorted((REPO / "local").glob("*.py"))]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_relative_and_lazy_imports_are_read(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from .c import g\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imported_modules(pkg / "a.py", known, "pkg.a") == {"pkg", "pkg.b", "pkg.c"}


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "mvq_kd.trainer" in graph and graph["mvq_kd.trainer"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    graph = import_graph()
    for module, deps in graph.items():
        if module in PRIMITIVES:
            upward = deps - PRIMITIVES
            assert not upward, f"{module} is a primitive but imports {sorted(upward)}"
        elif module not in PIPELINES and module != "mvq_kd.config":
            upward = deps & PIPELINES
            assert not upward, f"{module} imports the pipeline(s) {sorted(upward)}"


@pytest.mark.parametrize("program", programs(), ids=lambda p: p.name)
def test_programs_do_not_import_the_trainer(program):
    graph = import_graph()
    direct = imported_modules(program, set(graph))
    assert "mvq_kd.trainer" not in reachable(graph, direct), (
        f"{program.name} imports mvq_kd.trainer (directly or through {sorted(direct)})"
    )


def test_decode_help_loads_no_trainer():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['decode.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('decode.py', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', ' '.join(sorted(m for m in sys.modules if m.startswith('mvq_kd'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    loaded = out.split("MODULES", 1)[1].split()
    assert "mvq_kd.evaluate" in loaded, "decode.py --help did not run"
    for module in ("mvq_kd.trainer", "mvq_kd.loss", "mvq_kd.kd.build", "mvq_kd.config"):
        assert module not in loaded, f"decode.py --help loads {module}"


def test_file_sizes():
    for path in sorted(PACKAGE.rglob("*.py")):
        n = len(path.read_text().splitlines())
        assert n <= MAX_LINES, f"{path.relative_to(REPO)} has {n} lines (at most {MAX_LINES})"
    n = len((PACKAGE / "trainer.py").read_text().splitlines())
    assert n <= MAX_TRAINER_LINES, f"trainer.py has {n} lines (at most {MAX_TRAINER_LINES})"
