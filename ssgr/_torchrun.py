"""What ``ssgr generate`` and ``ssgr prune`` share under ``torchrun``: the rank environment, the
per-rank log filter and joining / leaving the process group.

* :func:`torchrun_env` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun, see
  https://pytorch.org/docs/stable/elastic/run.html) with a clear error for values that are not
  integers or a rank outside the world;
* :class:`RankFilter` (installed by :func:`rank_logging` for a block or by
  :func:`install_rank_logging` for the rest of the process): INFO and DEBUG from rank 0 only,
  WARNING and ERROR from every rank, every line prefixed ``[rank r/N]``;
* :func:`join_group` / :func:`leave_group` / :func:`process_group`: a
  :mod:`torch.distributed` process group from the torchrun environment, left open when the
  caller had already initialised one.

Nothing here runs at import; :mod:`torch.distributed` is imported when a group is joined.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ssgr.errors import InputError


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a torchrun job: ``rank`` in ``[0, world_size)``, ``world_size``
    >= 1 and ``local_rank`` (the device index on this node; ``RANK`` when torchrun did not set
    ``LOCAL_RANK``)."""

    rank: int
    world_size: int
    local_rank: int


def torchrun_env(command: str, *, error: type[Exception] = InputError,
                 need_master: bool = False) -> TorchrunEnv | None:
    """The torchrun environment of this process, or None when it was not started by torchrun
    (neither ``RANK`` nor ``WORLD_SIZE`` set; with ``need_master`` also when ``MASTER_ADDR``
    is missing, so a stray ``RANK`` alone does not start a process group).

    Args:
        command: the ssgr command, named in the error (``"generate"``, ``"prune"``).
        error: the exception class raised (an :class:`~ssgr.errors.InputError` subclass).
        need_master: require ``MASTER_ADDR`` as well (a process group is joined from it).
    Raises:
        ``error`` when RANK / WORLD_SIZE / LOCAL_RANK are not integers, WORLD_SIZE < 1 or the
        rank is outside ``[0, WORLD_SIZE)``.
    """
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    local = os.environ.get("LOCAL_RANK")
    if rank is None and world is None:
        return None
    if need_master and (rank is None or world is None or "MASTER_ADDR" not in os.environ):
        return None
    try:
        r, w = int(rank if rank is not None else 0), int(world if world is not None else 1)
        lr = int(local) if local is not None else r
    except ValueError:
        raise error(
            f"RANK={rank!r} / WORLD_SIZE={world!r} / LOCAL_RANK={local!r} in the environment are "
            f"not integers; start ssgr {command} with torchrun (or unset them)"
        ) from None
    if w < 1 or not 0 <= r < w:
        raise error(f"RANK={r} is outside WORLD_SIZE={w} in the environment (torchrun sets both)")
    return TorchrunEnv(r, w, lr)


class RankFilter(logging.Filter):
    """A log filter for rank ``rank`` of ``world_size``: drops records below WARNING on ranks
    other than 0 and prefixes every record it keeps with ``[rank r/N]`` (once)."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.rank, self.prefix = rank, f"[rank {rank}/{world_size}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank != 0 and record.levelno < logging.WARNING:
            return False
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def _handlers(last_resort: bool) -> list[logging.Handler]:
    hs = logging.getLogger().handlers or ([logging.lastResort] if last_resort else [])
    return [h for h in hs if h is not None]


@contextlib.contextmanager
def rank_logging(rank: int, world_size: int) -> Iterator[None]:
    """For the block, a :class:`RankFilter` on the root logger's handlers (Python's last-resort
    handler when there are none), removed after."""
    flt = RankFilter(rank, world_size)
    handlers = _handlers(last_resort=True)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


def install_rank_logging(rank: int, world_size: int) -> None:
    """A :class:`RankFilter` on the root logger's handlers for the rest of the process (so the
    CLI's last ERROR line still names the rank), once per handler: a handler that already has
    one keeps it. Python's last-resort handler (no handlers configured) is left alone."""
    flt = RankFilter(rank, world_size)
    for h in _handlers(last_resort=False):
        if not any(isinstance(g, RankFilter) for g in h.filters):
            h.addFilter(flt)


def join_group(backend: str, timeout_s: float, **kwargs: Any) -> bool:
    """Initialise the default :mod:`torch.distributed` process group from the torchrun
    environment (``env://``) with ``backend`` and a collective timeout of ``timeout_s``
    seconds (``kwargs`` go to ``init_process_group``, e.g. ``device_id``). Returns whether this
    call initialised it (False: the caller's group is used as it is)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return True


def leave_group(owned: bool) -> None:
    """Destroy the default process group when :func:`join_group` initialised it (``owned``)."""
    import torch.distributed as dist

    if owned and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(backend: str, timeout_s: float) -> Iterator[Any]:
    """:func:`join_group` for the block, then :func:`leave_group`; yields
    :mod:`torch.distributed`."""
    import torch.distributed as dist

    owned = join_group(backend, timeout_s)
    try:
        yield dist
    finally:
        leave_group(owned)
