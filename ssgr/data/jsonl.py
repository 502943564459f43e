"""Small jsonl helpers: line-numbered reading with clear errors, atomic writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ssgr.data.errors import DataError


def iter_jsonl(path: str | os.PathLike[str], what: str = "jsonl") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a jsonl file.

    Raises :class:`DataError` naming the file and line for unreadable JSON or a line
    that is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {str(p)!r} does not exist (check the path)")
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{p}:{lineno}: malformed JSON in {what} file ({e.msg} at column {e.colno}); "
                    "fix or remove that line"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{p}:{lineno}: each line of a {what} file must be a JSON object, "
                    f"got {type(obj).__name__}"
                )
            yield lineno, obj


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` to ``path`` atomically (temp file + rename); returns the row count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one JSON document atomically (pretty-printed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
