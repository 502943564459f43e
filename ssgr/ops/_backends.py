"""Imports every implementation module of every op so they register themselves (called once, by
:func:`ssgr.ops._registry._load_backends`, on the first dispatch or support-matrix query).

Each op is a package with one file per implementation: ``reference.py`` (pure torch),
``cpu.py`` (C++/OpenMP ``ssgr._C`` through :mod:`ssgr.ops._native`, or torch on CPU) and
``gpu.py`` (``triton`` and ``cuda``, loaded lazily by :mod:`ssgr.ops._gpu`, whose probes say why
they cannot run where that is so). Importing them imports nothing compiled.
"""

from __future__ import annotations

import importlib

from ._registry import OPS_PACKAGES

IMPLEMENTATIONS = ("reference", "cpu", "gpu")


def load() -> None:
    """Import ``ssgr.ops.<op>.<impl>`` for every op package and implementation file."""
    for pkg in OPS_PACKAGES:
        for impl in IMPLEMENTATIONS:
            importlib.import_module(f"ssgr.ops.{pkg}.{impl}")
