"""The append-only TRACES.jsonl store.

One line per sample with exactly the fields of :data:`TRACE_FIELDS`::

    {"problem_id": "p1", "sample": 0, "prompt": "<|im_start|>user ...", "response": "...",
     "num_tokens": 812, "finish_reason": "stop", "answer": "42", "correct": true, "flags": []}

``num_tokens`` counts response tokens (including the end-of-sequence token when the model
stopped by itself, as vLLM and OpenAI servers report it). The sampling seed of a sample is not
stored: it is :func:`ssgr.data.generate.sample_seed` of (run seed, problem id, sample index), and
the run settings live next to the file in ``TRACES.jsonl.meta.json``.

Every line is written with one ``write`` call and flushed before the next sample is started, so a
killed run leaves at most one partial last line; :class:`TraceWriter` drops it (with a warning) on
restart and the generator then redoes only the samples that have no complete line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ssgr.data.errors import DataError
from ssgr.io import iter_jsonl

logger = logging.getLogger(__name__)

TRACE_FIELDS = (
    "problem_id", "sample", "prompt", "response", "num_tokens",
    "finish_reason", "answer", "correct", "flags",
)
FINISH_REASONS = ("stop", "length")


@dataclasses.dataclass
class Trace:
    """One generated sample and its verdict."""

    problem_id: str
    sample: int
    prompt: str
    response: str
    num_tokens: int
    finish_reason: str
    answer: str | None
    correct: bool
    flags: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The jsonl form (exactly :data:`TRACE_FIELDS`)."""
        return {f: getattr(self, f) for f in TRACE_FIELDS}

    @property
    def clean(self) -> bool:
        """No quality flags."""
        return not self.flags


def trace_from_dict(obj: dict[str, Any], where: str) -> Trace:
    """Validate one traces line; ``where`` (``file:line``) prefixes errors."""
    missing = [f for f in TRACE_FIELDS if f not in obj]
    if missing:
        raise DataError(
            f"{where}: trace is missing field(s) {missing}; a traces line needs "
            f"{list(TRACE_FIELDS)} (write traces with `ssgr generate`)"
        )
    checks = [
        (
            "problem_id",
            isinstance(obj["problem_id"], (str, int)) and not isinstance(obj["problem_id"], bool),
        ),
        (
            "sample",
            isinstance(obj["sample"], int)
            and not isinstance(obj["sample"], bool)
            and obj["sample"] >= 0,
        ),
        ("prompt", isinstance(obj["prompt"], str)),
        ("response", isinstance(obj["response"], str)),
        (
            "num_tokens",
            isinstance(obj["num_tokens"], int)
            and not isinstance(obj["num_tokens"], bool)
            and obj["num_tokens"] >= 0,
        ),
        ("finish_reason", obj["finish_reason"] in FINISH_REASONS),
        ("answer", obj["answer"] is None or isinstance(obj["answer"], str)),
        ("correct", isinstance(obj["correct"], bool)),
        ("flags", isinstance(obj["flags"], list) and all(isinstance(x, str) for x in obj["flags"])),
    ]
    for name, ok in checks:
        if not ok:
            raise DataError(f"{where}: bad value for trace field {name!r}: {obj[name]!r}")
    d = {f: obj[f] for f in TRACE_FIELDS}
    d["problem_id"] = str(d["problem_id"])
    return Trace(**d)


def read_traces(path: str | os.PathLike[str]) -> list[Trace]:
    """Read and validate a traces file; duplicate (problem_id, sample) pairs are an error."""
    traces: list[Trace] = []
    seen: dict[tuple[str, int], int] = {}
    for lineno, obj in iter_jsonl(path, what="traces", error=DataError):
        t = trace_from_dict(obj, f"{path}:{lineno}")
        key = (t.problem_id, t.sample)
        if key in seen:
            raise DataError(
                f"{path}:{lineno}: duplicate trace for problem {t.problem_id!r} sample {t.sample} "
                f"(first on line {seen[key]}); remove one of the two lines"
            )
        seen[key] = lineno
        traces.append(t)
    if not traces:
        raise DataError(f"traces file {str(path)!r} is empty; run `ssgr generate` first")
    return traces


def repair_partial_tail(path: Path) -> int:
    """Drop a partial last line left by a killed writer; returns the bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # find the start of the last line
        pos, chunk = size, 4096
        start = 0
        while pos > 0:
            read = min(chunk, pos)
            pos -= read
            f.seek(pos)
            buf = f.read(read)
            nl = buf.rfind(b"\n")
            if nl >= 0:
                start = pos + nl + 1
                break
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    removed = size - start
    logger.warning(
        "%s: dropped a partial last line (%d bytes) left by an interrupted run", path, removed
    )
    return removed


class TraceWriter:
    """Append-only writer; resumes an existing file.

    Use as a context manager. :attr:`done` holds the (problem_id, sample) pairs already present.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_partial_tail(self.path)
        self.done: set[tuple[str, int]] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            for lineno, obj in iter_jsonl(self.path, what="traces", error=DataError):
                t = trace_from_dict(obj, f"{self.path}:{lineno}")
                key = (t.problem_id, t.sample)
                if key in self.done:
                    raise DataError(
                        f"{self.path}:{lineno}: duplicate trace for problem {t.problem_id!r} "
                        f"sample {t.sample}; remove one of the two lines before resuming"
                    )
                self.done.add(key)
        self._f = self.path.open("a", encoding="utf-8")
        #: Called once just before the first line this writer appends (e.g. to write the run
        #: settings only once a sample exists); None for nothing.
        self.before_first_write: Callable[[], None] | None = None

    def write(self, trace: Trace) -> None:
        """Append one complete line and flush it to the OS (fsync'd in :meth:`sync`)."""
        key = (trace.problem_id, trace.sample)
        if key in self.done:
            raise DataError(f"{self.path}: sample {key} already written")
        if self.before_first_write is not None:
            hook, self.before_first_write = self.before_first_write, None
            hook()
        self._f.write(json.dumps(trace.to_dict(), ensure_ascii=False) + "\n")
        self._f.flush()
        self.done.add(key)

    def write_many(self, traces: Iterable[Trace]) -> None:
        """Append several lines, then fsync."""
        for t in traces:
            self.write(t)
        self.sync()

    def sync(self) -> None:
        """fsync the file."""
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Flush, fsync and close."""
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
