"""Script options as dataclasses: one declaration gives the defaults, the flags and ``run(...)``.

Each script declares its options once, as a dataclass whose fields are made with
:func:`option`. :func:`build_parser` turns it into an argparse parser (``img_size`` ->
``--img-size``; the type, default and help come from the field), and :func:`make_options`
builds it from keyword arguments, so ``python detect.py --conf-thres 0.4`` and
``detect.run(conf_thres=0.4)`` are the same call with the same defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["build_parser", "make_options", "option", "options_dict", "parse_options", "plain_dict"]


def option(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A dataclass field that is also a command-line flag.

    ``cli`` holds argparse keywords (``choices``, ``nargs``, ``const``, ``type``, ...) and
    two of ours: ``flag`` (the flag's name when it is not ``--field-name``, e.g. ``--no-plots``)
    and ``hidden=True`` (a ``run(...)`` keyword with no flag). A list default is copied per
    instance.
    """
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, "cli": cli})
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _base_type(tp: Any) -> tuple[Any, Any]:
    """(scalar type, container origin or None) of an annotation; unions without None -> str."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, None)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return (args[0] if args else str), origin
    return tp, None


def _argument(f: dataclasses.Field, tp: Any) -> tuple[str, dict[str, Any]] | None:
    """(flag, argparse keywords) of one field, or None for a hidden one."""
    cli = dict(f.metadata.get("cli", {}))
    if cli.pop("hidden", False):
        return None
    flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
    kw: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help") or None}
    default = _default(f)
    base, container = _base_type(tp)
    if base is bool and container is None and "nargs" not in cli:
        kw["action"] = "store_false" if default is True else "store_true"
    else:
        kw["type"] = base if base in (int, float, str) else str
        if container is not None:
            kw["nargs"] = "+"
    if default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
    kw.update(cli)
    return flag, kw


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and each flag's default after its help (unless it says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, "", False, argparse.SUPPRESS) or action.required or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)".strip()


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per (non-hidden) field of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        arg = _argument(f, hints[f.name])
        if arg is not None:
            parser.add_argument(arg[0], **arg[1])
    return parser


def parse_options(cls: type[T], argv: list[str] | None = None, description: str | None = None) -> T:
    """``cls`` from command-line arguments (``sys.argv[1:]`` when ``argv`` is None)."""
    return cls(**vars(build_parser(cls, description).parse_args(argv)))


def make_options(cls: type[T], options: T | None = None, **kwargs: Any) -> T:
    """``options`` (or ``cls``'s defaults) updated by ``kwargs``; unknown names are a ValueError."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"run() takes a {cls.__name__} or keyword arguments, not a positional "
                        f"{type(options).__name__}: write e.g. run(weights=...)")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(names)}")
    if options is not None:
        return dataclasses.replace(options, **kwargs)
    missing = [f.name for f in dataclasses.fields(cls) if _default(f) is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise ValueError(f"missing required options {missing}")
    return cls(**kwargs)


def plain_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as YAML/JSON-safe plain Python (paths become strings, tuples lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, Mapping):
            return plain_dict(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return {str(k): plain(v) for k, v in values.items()}


def options_dict(options: Any) -> dict[str, Any]:
    """A dataclass of options as YAML/JSON-safe plain values."""
    return plain_dict(dataclasses.asdict(options))
