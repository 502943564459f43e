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

__all__ = ["iter_jsonl", "write_json_atomic", "write_jsonl_atomic", "write_text_atomic"]


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


@contextmanager
def _atomic(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A text file handle whose content replaces ``path`` on a clean exit (fsynced), and which
    is removed on any exception, leaving ``path`` as it was."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
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
