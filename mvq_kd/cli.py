"""Command lines built from the dataclass configs, so that each option is declared once.

A config field becomes an option when it is declared with :func:`option`: its help
text, default and flag live in the dataclass, and every program that exposes the
config builds its options from there::

    @dataclass
    class OptimConfig:
        base_lr: float = option(2e-3, "peak learning rate")

    parser = make_parser(__doc__)
    add_config_args(parser, OptimConfig, "optimization")  # --base-lr, default 0.002
    cfg = config_from_args(OptimConfig, parser.parse_args())

The option's type follows the field's annotation: ``int``, ``float``, ``str``, ``Path``;
``bool`` takes ``true/false/1/0/yes/no``; ``Optional[bool]`` also ``auto`` (None);
sequences need ``nargs``. Every parser refuses abbreviations (``--num-epoch`` is not
``--num-epochs``) and shows defaults in ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

_META = "cli"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: Optional[str] = None,
    choices: Optional[Sequence] = None,
    nargs: Union[str, int, None] = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default, default_factory: as for :func:`dataclasses.field` (neither: a required
            option).
        help: the option's help text (required: every option explains itself).
        flag: the option string (default: ``--`` + the field name with dashes).
        choices: the allowed values.
        nargs: ``"+"`` or ``"*"`` for sequence fields, a number for fixed-size tuples.
    """
    if not help:
        raise ValueError("every option needs a help text")
    meta = {_META: {"help": help, "flag": flag, "choices": choices, "nargs": nargs}}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def str2bool(v: str) -> bool:
    """``true/1/yes`` or ``false/0/no`` (any case)."""
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def str2tristate(v: str) -> Optional[bool]:
    """``auto`` (None) or a :func:`str2bool` value."""
    return None if v.lower() == "auto" else str2bool(v)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout; shows the default of every optional option."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required:
            return action.help or ""
        return super()._get_help_string(action)


def make_parser(description: Optional[str]) -> argparse.ArgumentParser:
    """A parser with the project's conventions: no abbreviations, defaults shown."""
    return argparse.ArgumentParser(
        description=description, allow_abbrev=False, formatter_class=HelpFormatter
    )


def _cli_fields(cls) -> Tuple[Dict[str, Any], Dict[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return hints, {f.name: f for f in dataclasses.fields(cls) if _META in f.metadata}


def flag_of(f: dataclasses.Field) -> str:
    """The option string of a config field declared with :func:`option`."""
    return f.metadata[_META]["flag"] or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    return flag_of(f).lstrip("-").replace("-", "_")


def _unwrap_optional(hint) -> Tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _converter(hint, optional: bool) -> Callable[[str], Any]:
    if hint is bool:
        return str2tristate if optional else str2bool
    if hint in (int, float, str, Path):
        return hint
    raise TypeError(f"no command-line type for {hint!r}")


def add_config_args(
    parser: argparse.ArgumentParser,
    cls,
    title: str,
    required: Sequence[str] = (),
) -> argparse._ArgumentGroup:
    """Add the options of the config dataclass ``cls`` as the argument group ``title``
    (returned, for options of the program that belong with them).

    Args:
        required: field names that are required options here, even with a default.
    """
    hints, fields = _cli_fields(cls)
    group = parser.add_argument_group(title)
    for name, f in fields.items():
        meta = f.metadata[_META]
        hint, optional = _unwrap_optional(hints[name])
        kwargs: Dict[str, Any] = {"help": meta["help"], "dest": _dest(f)}
        if meta["nargs"]:
            kwargs["nargs"] = meta["nargs"]
            (hint,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        kwargs["type"] = _converter(hint, optional)
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if hint is bool:
            kwargs["metavar"] = "{auto,true,false}" if optional else "{true,false}"
        if f.default is not dataclasses.MISSING:
            # Optional[bool]: the default None is written "auto" (parsed back to None)
            kwargs["default"] = "auto" if hint is bool and optional else f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        if name in required or "default" not in kwargs:
            kwargs["required"] = True
        group.add_argument(flag_of(f), **kwargs)
    return group


def config_from_args(cls, args: argparse.Namespace, **given: Any):
    """``cls`` from the options :func:`add_config_args` added, plus the ``given`` fields
    that are not options (derived ones)."""
    hints, fields = _cli_fields(cls)
    values = {}
    for name, f in fields.items():
        value = getattr(args, _dest(f))
        if typing.get_origin(_unwrap_optional(hints[name])[0]) is tuple and value is not None:
            value = tuple(value)
        values[name] = value
    return cls(**values, **given)
