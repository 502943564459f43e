"""Loader of the native CPU extension ``ssgr._C`` (C++/OpenMP, built from csrc/ by setup.py)."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from ssgr import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, (
            f"the native extension ssgr._C is not built ({exc}); run "
            "`pip install --no-build-isolation --no-deps -e .` (or `make setup`)"
        )
    return _C, None


def probe() -> str | None:
    """None when ``ssgr._C`` imports, else why not."""
    return _load()[1]


def lib() -> ModuleType:
    """The loaded ``ssgr._C`` module (call only after :func:`probe` returned None)."""
    mod, reason = _load()
    if mod is None:
        raise RuntimeError(reason)
    return mod
