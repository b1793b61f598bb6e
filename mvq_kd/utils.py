"""Small shared helpers: atomic file output and logging set-up."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

Pathlike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: Pathlike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    An interrupted writer leaves at most a ``.tmp-<pid>-<name>`` file behind, never a
    half-written ``path``. The temporary name keeps the suffixes of ``path`` (so
    ``x.jsonl.gz`` stays gzip-compressed when written by lhotse).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_lines(path: Pathlike, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``path`` atomically, each ended by a newline."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def setup_logging(verbose: bool = False, log_file: Optional[Path] = None) -> None:
    """Configure the root logger as the recipe scripts do (time, level, location), also
    into ``log_file`` (appended; its folder is made) when given."""
    handlers: List[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        handlers=handlers,
    )
