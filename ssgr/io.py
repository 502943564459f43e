"""The package's one jsonl reader and its atomic writers.

Every jsonl file ssgr reads (calibration sets, problems, traces) goes through :func:`iter_jsonl`,
so a bad line is reported the same way everywhere: ``FILE:LINE: what is wrong; the fix``. Every
file that marks progress or holds a result is written by :func:`write_json_atomic`,
:func:`write_jsonl_atomic` or :func:`write_text_atomic`: a temporary file in the same directory,
flushed and fsynced, then renamed over the target, so a kill leaves the old file or the new one,
never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ssgr.errors import InputError

__all__ = [
    "MANIFEST", "ForeignFilesError", "OutputLockedError", "claim_files", "file_sha256",
    "foreign_files", "foreign_files_message", "iter_jsonl", "lock_path", "output_lock",
    "remove_owned", "write_json_atomic", "write_jsonl_atomic", "write_text_atomic",
]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _decode(raw: bytes, path: Path, lineno: int, what: str, error: type[Exception]) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}) "
            f"in {what} file; save it as UTF-8 or remove that line"
        ) from None
    if not line.strip():
        return None
    try:
        return json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise error(
            f"{path}:{lineno}: malformed JSON in {what} file ({e.msg} at column {e.colno}); "
            "fix or remove that line"
        ) from None
    except ValueError as e:  # NaN / Infinity / -Infinity
        raise error(f"{path}:{lineno}: {e} in {what} file; write a finite number") from None
    except RecursionError:
        raise error(
            f"{path}:{lineno}: malformed JSON in {what} file (nested too deeply to read); "
            "fix or remove that line"
        ) from None


def iter_jsonl(
    path: str | os.PathLike[str], what: str = "jsonl", *, error: type[Exception] = InputError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a jsonl file.

    Lines are numbered from 1. ``NaN`` / ``Infinity`` (which Python's json accepts) are refused.

    Raises:
        ``error`` (default :class:`~ssgr.errors.InputError`), naming the file and line, for a
        missing file, a directory, bytes that are not UTF-8, malformed or too deeply nested
        JSON, non-finite numbers, or a line that is not a JSON object.
    """
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} file {str(p)!r} is a directory; pass the .jsonl file inside it")
    if not p.is_file():
        raise error(f"{what} file {str(p)!r} does not exist (check the path)")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            obj = _decode(raw, p, lineno, what, error)
            if obj is None:
                continue
            if not isinstance(obj, dict):
                raise error(
                    f"{p}:{lineno}: each line of a {what} file must be a JSON object, "
                    f"got {type(obj).__name__}"
                )
            yield lineno, obj


def _mode_for(p: Path) -> int:
    """Permission bits a file written at ``p`` should get: those of the file it replaces, else
    ``0o666`` minus the process umask (what ``open(p, "w")`` gives)."""
    try:
        return p.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only be
    read by setting it, which is racy with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _atomic(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A text file handle whose content replaces ``path`` on a clean exit (fsynced), and which
    is removed on any exception, leaving ``path`` as it was."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        # mkstemp makes the file 0600: give it the mode a plain open() would (the existing
        # file's, else 0666 minus the umask), so an atomic write changes no permissions
        os.fchmod(fd, _mode_for(p))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` to ``path`` atomically, one JSON object per line; returns the row count."""
    n = 0
    with _atomic(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write one JSON document to ``path`` atomically (pretty-printed unless ``indent=None``;
    ``default`` converts objects json cannot, as in :func:`json.dump`)."""
    with _atomic(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, default=default)
        f.write("\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with _atomic(path) as f:
        f.write(text)


# --- output safety: a run lock, the ssgr-owned files manifest and cached content hashes ----------
#
# Added for issue #18 (items 6, 9, 10); reused by every command that writes an output directory.

#: Name of the manifest of the files ssgr wrote in an output directory (see :func:`claim_files`).
MANIFEST = ".ssgr-owned.json"


class OutputLockedError(InputError):
    """Another live process holds the run lock of an output (see :func:`output_lock`)."""


class ForeignFilesError(InputError):
    """An output directory holds files ssgr did not write (see :func:`remove_owned`)."""


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it (so it outlives an
    ``--overwrite`` of the directory and never appears inside the output)."""
    p = Path(path).absolute()
    return p.parent / f".{p.name}.lock"


def _lock_holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return pid if pid.isdigit() else "unknown (starting up)"


@contextmanager
def output_lock(path: str | os.PathLike[str], flag: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` for the block (one run per output).

    The lock is ``fcntl.flock`` on :func:`lock_path` ``(path)``, which holds the owner's pid. The
    kernel drops a flock when its process dies, so the lock file of a killed run (a stale lock)
    is simply taken over; the file is removed on exit from the block, errors and
    ``KeyboardInterrupt`` included. Works between processes and between two locks of one process.

    Args:
        path: the output file or directory (it need not exist; its parent is created).
        flag: how the user named it, for the message (e.g. ``"--out"``).
    Yields:
        the lock file's path.
    Raises:
        OutputLockedError (an :class:`~ssgr.errors.InputError`) at once when another run holds
        the lock, naming its pid.
    """
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(
                f"{flag} {path} is in use by another ssgr run (pid {_lock_holder(lock)}, lock "
                f"file {lock}); wait for it to finish or stop it, or choose another {flag}"
            ) from None
        # the previous holder may have removed the file between our open and flock: retry
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


def _read_manifest(folder: Path) -> list[str]:
    f = folder / MANIFEST
    if not f.is_file():
        return []
    try:
        names = json.loads(f.read_text(encoding="utf-8")).get("files", [])
    except (ValueError, OSError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str)]


def claim_files(folder: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Record ``names`` (paths relative to ``folder``; a directory name covers everything under
    it) as written by ssgr, in ``folder/.ssgr-owned.json`` (created with ``folder``; names
    already there are kept). Call it *before* writing the files, so a kill never leaves an
    unlisted file of ours. Temporaries of a listed name count as listed too: ``NAME.tmp*``,
    ``NAME.trash*`` and ``.NAME.*.tmp`` (the atomic writers' temporaries)."""
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    have = _read_manifest(p)
    new = [n for n in names if n not in have]
    if new or not (p / MANIFEST).is_file():
        write_json_atomic(p / MANIFEST, {"files": have + new})


def _owned(rel: str, entries: list[str]) -> bool:
    if rel == MANIFEST or (rel.startswith(f".{MANIFEST}.") and rel.endswith(".tmp")):
        return True
    parent, _, name = rel.rpartition("/")
    for e in entries:
        if rel == e or rel.startswith(e + "/"):
            return True
        eparent, _, ename = e.rpartition("/")
        if eparent == parent and (name.startswith((f"{ename}.tmp", f"{ename}.trash"))
                                  or (name.startswith(f".{ename}.") and name.endswith(".tmp"))):
            return True
    return False


def foreign_files(folder: str | os.PathLike[str]) -> list[str]:
    """Paths (relative, sorted) under ``folder`` that its manifest does not cover (see
    :func:`claim_files`); every entry is foreign when there is no manifest. A covered
    directory is not descended into."""
    p = Path(folder)
    if not p.is_dir():
        return []
    entries = _read_manifest(p)
    out: list[str] = []

    def walk(d: Path, prefix: str) -> None:
        for c in sorted(d.iterdir()):
            rel = prefix + c.name
            if _owned(rel, entries):
                continue
            if c.is_dir() and not c.is_symlink() and any(e.startswith(rel + "/")
                                                         for e in entries):
                walk(c, rel + "/")
            else:
                out.append(rel)

    walk(p, "")
    return out


def foreign_files_message(folder: str | os.PathLike[str], foreign: list[str], flag: str) -> str:
    """The refusal of :func:`remove_owned`: up to 5 foreign names and the fix."""
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return (f"{folder} holds files ssgr did not write ({shown}); {flag} removes only files ssgr "
            "wrote itself (listed in its .ssgr-owned.json): move those away, or choose another "
            "output directory")


def remove_owned(folder: str | os.PathLike[str], flag: str = "--overwrite") -> None:
    """Empty ``folder`` of what ssgr wrote there (its manifest, :func:`claim_files`), the
    manifest last; the folder itself stays. Nothing is removed when anything else is there.

    Raises:
        ForeignFilesError (an :class:`~ssgr.errors.InputError`) naming up to 5 foreign paths.
    """
    import shutil

    p = Path(folder)
    if not p.is_dir():
        return
    foreign = foreign_files(p)
    if foreign:
        raise ForeignFilesError(foreign_files_message(p, foreign, flag))
    for c in sorted(p.iterdir()):
        if c.name == MANIFEST:
            continue
        if c.is_dir() and not c.is_symlink():
            shutil.rmtree(c)
        else:
            c.unlink()
    (p / MANIFEST).unlink(missing_ok=True)


def _hash_cache_file() -> Path:
    base = os.environ.get("SSGR_HASH_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "ssgr" / "file-sha256.json"


def file_sha256(path: str | os.PathLike[str], *, cache: bool = False) -> str:
    """Hex sha256 of a file's bytes.

    With ``cache=True`` the digest is remembered in ``$SSGR_HASH_CACHE`` (default
    ``~/.cache/ssgr/file-sha256.json``, written atomically) keyed on the real path, device,
    inode, size, ``mtime_ns`` and ``ctime_ns``: any rewrite, replacement or metadata change of
    the file makes it hash again, so a 28 GB checkpoint is read once while it is unchanged. A
    cache that cannot be read or written is ignored (the digest is then computed each time).
    """
    import hashlib

    p = Path(path)
    st = p.stat()
    key = json.dumps([str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                      st.st_ctime_ns])
    cf = _hash_cache_file()
    table: dict[str, str] = {}
    if cache:
        try:
            table = json.loads(cf.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
        if isinstance(table, dict) and isinstance(table.get(key), str):
            return table[key]
        if not isinstance(table, dict):
            table = {}
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache:
        # drop entries of this path with an older stat, keep the rest
        prefix = json.dumps([str(p.resolve())])[:-1] + ","
        table = {k: v for k, v in table.items() if not k.startswith(prefix)}
        table[key] = digest
        try:
            write_json_atomic(cf, table, indent=None)
        except OSError:
            pass
    return digest
