"""Errors raised by the streaming pruning engine.

All derive from :class:`ssgr.errors.InputError` (an :class:`~ssgr.errors.SSGRError` and a
``ValueError``): ``python -m ssgr.prune`` reports them as one ERROR line and exits with status 2.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from ssgr.errors import InputError
from ssgr.models.checks import ModelDirError


class PruneError(InputError):
    """Bad input or a state the engine cannot continue from; the message names the fix."""


class CalibError(PruneError):
    """A calibration file problem; the message names the file and line."""


class ActivationError(PruneError):
    """NaN/Inf activations; the message names the layer and module."""


class MissingFileError(PruneError, FileNotFoundError):
    """A model directory, shard or calibration file that does not exist (also a
    ``FileNotFoundError``, as it was before it became a :class:`PruneError`)."""


class LayerError(PruneError):
    """An exception raised inside a decoder layer's forward; the message names the layer and the
    module, and the original exception is its ``__cause__``."""


class OutputError(PruneError):
    """``--out`` cannot be written (read-only file system, permission denied, a file in its
    path, disk full); the message names the path and the fix."""


_DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full: an ``OSError`` with ``ENOSPC`` /
    ``EDQUOT``, numpy's short write (``"32768 requested and 24576 written"``) or a safetensors
    write error wrapping "No space left on device"."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    msg = str(exc)
    return ("requested and" in msg and "written" in msg) or "No space left on device" in msg \
        or "StorageFull" in msg or "Disk quota exceeded" in msg


def disk_full_error(path) -> OutputError:
    """The error for a disk that filled up while writing ``path``."""
    return OutputError(f"disk full while writing {path}; free space and rerun the same command "
                       "with --resume")


@contextmanager
def writing(path) -> Iterator[None]:
    """Turn a disk-full failure (:func:`is_disk_full`) of the block that writes ``path`` into
    :func:`disk_full_error` (the original exception is its cause); other errors pass."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise


class ModelError(PruneError, ModelDirError):
    """A broken or incomplete model directory (:func:`ssgr.models.checks.check_model_dir`), as a
    :class:`PruneError` of ``ssgr prune``; the message names the file and the key."""
