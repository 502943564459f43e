"""One source for every option: command-line parsers built from the config dataclasses.

A command's options are the fields of one dataclass (``PruneConfig``, ``RunConfig``, ...), each
declared with :func:`option`: its default, help text, choices and flag spelling are written there
once. :func:`add_options` turns the dataclass into argparse arguments and :func:`from_args`
builds the dataclass back from the parsed namespace, so the Python API (the dataclass, or the
function taking it) and the command line take the same names with the same defaults.

Field types drive the argparse behaviour: ``bool`` fields are ``--flag`` switches (``--no-flag``
too when the default is True); ``list[str]`` fields take one or more values (or one
comma-separated value with ``sep=","``); ``int`` / ``float`` fields are converted by argparse;
``X | None`` fields accept X. A deprecated spelling of a flag still works for one release and logs
a WARNING naming the new one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_META = "ssgr_option"


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    choices: Sequence[Any] | None = None,
    flag: str | None = None,
    short: str | None = None,
    metavar: str | None = None,
    type: Callable[[str], Any] | None = None,
    sep: str | None = None,
    positional: bool = False,
    deprecated: Sequence[str] = (),
    cli: bool = True,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the default (omit for a required option or a positional argument).
        help: one line for ``--help``; the default is appended when it is not None.
        choices: the accepted values (checked by argparse and listed in ``--help``).
        flag: the long flag (default ``--field-name``).
        short: a one-letter alias such as ``-o``.
        metavar, type: as in :meth:`argparse.ArgumentParser.add_argument` (``type`` defaults to
            the field's type for int/float).
        sep: for list fields, split one value on ``sep`` instead of taking several values.
        positional: a positional argument instead of a flag.
        deprecated: old flag spellings that still work for one release, with a WARNING.
        cli: False keeps the field out of the command line (Python API only).
        default_factory: as in :func:`dataclasses.field`.
    """
    meta = {
        _META: dict(help=help, choices=choices, flag=flag, short=short, metavar=metavar,
                    type=type, sep=sep, positional=positional, deprecated=tuple(deprecated),
                    cli=cli)
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Deprecated(argparse.Action):
    """Stores the value like the new flag and warns that the old spelling is going away."""

    def __init__(self, *args: Any, new_flag: str, inner: argparse.Action, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new_flag = new_flag
        self.inner = inner

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        log.warning("%s is deprecated and will be removed in the next release; use %s",
                    option_string, self.new_flag)
        self.inner(parser, namespace, values, option_string)


def _split(sep: str, item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [item(x.strip()) for x in text.split(sep) if x.strip()]

    parse.__name__ = "list"
    return parse


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether None was allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _kwargs(f: dataclasses.Field, tp: Any) -> tuple[list[str], dict[str, Any]]:
    m = f.metadata[_META]
    base, _ = _base_type(tp)
    origin = typing.get_origin(base)
    kw: dict[str, Any] = {}
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None
    if not required:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    helptext = m["help"]
    if m["positional"]:
        names = [f.name]
        if not required:
            kw["nargs"] = "?"
    else:
        names = [m["flag"] or "--" + f.name.replace("_", "-")]
        if m["short"]:
            names.insert(0, m["short"])
        kw["dest"] = f.name
    if base is bool:
        kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
    else:
        if origin in (list, tuple):
            (item,) = typing.get_args(base)[:1] or (str,)
            item = m["type"] or (item if item in (int, float) else str)
            if m["sep"]:
                kw["type"] = _split(m["sep"], item)
            else:
                kw["type"], kw["nargs"] = item, "+"
        elif m["type"] is not None:
            kw["type"] = m["type"]
        elif base in (int, float):
            kw["type"] = base
        if m["choices"] is not None:
            kw["choices"] = list(m["choices"])
        if m["metavar"]:
            kw["metavar"] = m["metavar"]
        if default is not None and default is not False and default != []:
            shown = default
            if m["sep"] and origin in (list, tuple):
                shown = m["sep"].join(map(str, default))
            helptext = f"{helptext} (default: {shown})"
    if required and not m["positional"]:
        kw["required"] = True
    if not required:
        kw["default"] = default
    kw["help"] = helptext
    return names, kw


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
    exclude: Sequence[str] = (),
) -> None:
    """Add one argument per :func:`option` field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        m = f.metadata.get(_META)
        if m is None or not m["cli"] or f.name in exclude:
            continue
        names, kw = _kwargs(f, hints[f.name])
        action = parser.add_argument(*names, **kw)
        for old in m["deprecated"]:
            nargs = action.nargs if action.nargs is not None else (0 if kw.get("action") else None)
            parser.add_argument(
                old, dest=f.name, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                action=_Deprecated, new_flag=names[-1], inner=action,
                nargs=nargs,
                **({"type": action.type} if action.type is not None else {}),
                **({"choices": action.choices} if action.choices is not None else {}),
            )


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass ``cls`` built from the parsed ``args`` (fields absent from ``args`` keep
    their defaults; ``overrides`` win)."""
    vals = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.init and hasattr(args, f.name)}
    vals.update(overrides)
    return cls(**vals)
