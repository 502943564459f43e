"""ssgr.prune: the streaming per-layer pruning engine (``prune_model``) and the in-memory
one-shot pruner used by ``ssgr demo`` (``ssgr.prune.oneshot``).

Importing this package loads nothing heavy; ``prune_model`` and ``PruneConfig`` are loaded on
first use.
"""

from __future__ import annotations

__all__ = ["PruneConfig", "prune_model"]


def __getattr__(name: str):
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'ssgr.prune' has no attribute {name!r}")
