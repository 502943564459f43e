"""Checks of output locations before any work, and the one wording of write failures.

Every command that writes a result (``generate``, ``eval``, ``ppl``, ``select``, ``run``) calls
:func:`check_output` on its ``--out`` before loading a model or reading inputs, so an unwritable
location fails at once with ``cannot write OUT: read-only file system (choose another --out)``
instead of an ``OSError`` traceback after the work. :func:`write_failure` turns an ``OSError``
raised while writing (disk full, read-only) into the same kind of one-line message.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ssgr.data.errors import DataError

_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def _reason(e: OSError) -> str:
    return _REASONS.get(e.errno or 0, e.strerror or type(e).__name__)


def check_output(path: str | os.PathLike[str], flag: str = "--out", kind: str = "file") -> Path:
    """Refuse an output location that cannot be written, before any work.

    ``kind`` is ``"file"`` (``path`` must not be an existing directory) or ``"dir"`` (``path``
    must not be an existing file). The nearest existing ancestor must be a directory in which a
    file can be created (tested by creating and removing a temporary file; nothing else is
    created). Returns ``Path(path)``.

    Raises:
        DataError (an :class:`~ssgr.errors.InputError`): ``cannot write OUT: read-only file
        system (choose another --out)``, or ``--out OUT is a directory; ...``.
    """
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise DataError(f"{flag} {p} is an existing directory; give a file path ({flag} FILE)")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise DataError(f"{flag} {p} is an existing file; give a directory path")
    probe = p if kind == "dir" and p.is_dir() else p.absolute().parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"cannot write {p}: {probe} is not a directory (choose another {flag})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ssgr-write-check.", dir=probe)
    except OSError as e:
        raise DataError(f"cannot write {p}: {_reason(e)} (choose another {flag})") from None
    os.close(fd)
    os.unlink(tmp)
    return p


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def is_write_failure(e: BaseException) -> bool:
    """True for an ``OSError`` that means the output could not be written (disk full, quota,
    read-only file system, or a short write), not a missing input or an ssgr error."""
    from ssgr.errors import SSGRError

    if not isinstance(e, OSError) or isinstance(e, SSGRError):
        return False
    return e.errno in _WRITE_ERRNOS or "requested and" in str(e)


def write_failure(e: OSError, path: str | os.PathLike[str] | None = None) -> DataError:
    """The one-line error for an ``OSError`` raised while writing ``path`` (default: the
    error's own file name): disk full -> ``disk full while writing PATH; free space and rerun
    the same command`` (finished work is kept and resumed); otherwise ``cannot write PATH:
    REASON``."""
    where = path if path is not None else (e.filename or "the output")
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or "requested and" in str(e):
        return DataError(
            f"disk full while writing {where}; free space and rerun the same command "
            "(finished work is kept and resumed)"
        )
    return DataError(f"cannot write {where}: {_reason(e)}")
