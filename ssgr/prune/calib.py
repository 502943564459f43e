"""Calibration sets: ``CALIB.jsonl`` with one sequence per line.

Each line is a JSON object with ``"input_ids": [int, ...]`` or ``"text": "..."`` (tokenized with the
model's tokenizer, special tokens added as the tokenizer does by default). Every other field is
kept as provenance. Sequences are never padded together: each is run alone with batch 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CalibError

log = logging.getLogger(__name__)

MAX_TOKENS = 32768


@dataclass
class CalibSequence:
    """One calibration sequence: ``input_ids[1, t]`` (int64, CPU), its line and provenance."""

    input_ids: torch.Tensor
    line: int
    provenance: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[-1])


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (part of the resume fingerprint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_calibration(
    path: str | Path,
    *,
    vocab_size: int,
    max_tokens: int,
    tokenize: Callable[[str], list[int]] | None = None,
    max_sequences: int | None = None,
) -> list[CalibSequence]:
    """Read and validate ``CALIB.jsonl``.

    Args:
        path: the jsonl file.
        vocab_size: token ids must lie in ``[0, vocab_size)``.
        max_tokens: longest allowed sequence (the model's context, at most 32768).
        tokenize: ``text -> ids`` for ``{"text": ...}`` lines; None makes text lines an error.
        max_sequences: keep only the first this many lines (None: all).
    Returns:
        the sequences in file order.
    Raises:
        CalibError naming ``path:line`` for an empty, corrupt, too long or out-of-vocabulary line.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"calibration file {p} does not exist; pass --calib CALIB.jsonl")
    out: list[CalibSequence] = []
    with open(p, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if max_sequences is not None and len(out) >= max_sequences:
                break
            where = f"{p}:{lineno}"
            if not raw.strip():
                raise CalibError(
                    f"{where}: empty line; every line must be a JSON object with \"input_ids\" or "
                    "\"text\" (remove blank lines)"
                )
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CalibError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                 "fix or remove this line") from None
            if not isinstance(obj, dict):
                raise CalibError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if "input_ids" in obj:
                ids = obj["input_ids"]
                if not isinstance(ids, list) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in ids
                ):
                    raise CalibError(f"{where}: \"input_ids\" must be a list of ints")
                prov = {k: v for k, v in obj.items() if k != "input_ids"}
            elif "text" in obj:
                if not isinstance(obj["text"], str):
                    raise CalibError(f"{where}: \"text\" must be a string")
                if tokenize is None:
                    raise CalibError(
                        f"{where}: a \"text\" line needs the model's tokenizer, but the model "
                        "directory has none; give \"input_ids\" instead or add the tokenizer files"
                    )
                try:
                    ids = list(tokenize(obj["text"]))
                except (ValueError, OSError) as exc:
                    raise CalibError(f"{where}: {exc}") from None
                prov = {k: v for k, v in obj.items() if k != "text"}
            else:
                raise CalibError(
                    f"{where}: no \"input_ids\" or \"text\" field "
                    f"(fields: {', '.join(obj) or 'none'})"
                )
            if not ids:
                raise CalibError(f"{where}: the sequence is empty (0 tokens); remove this line")
            if len(ids) > max_tokens:
                raise CalibError(
                    f"{where}: sequence of {len(ids)} tokens is longer than the limit of "
                    f"{max_tokens} (the model's context, at most {MAX_TOKENS}); truncate it or "
                    "drop the line"
                )
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= vocab_size:
                raise CalibError(
                    f"{where}: token id {hi if hi >= vocab_size else lo} is outside the model's "
                    f"vocabulary [0, {vocab_size}); was the set tokenized for another model?"
                )
            out.append(CalibSequence(torch.tensor([ids], dtype=torch.long), lineno, prov))
    if not out:
        raise CalibError(f"{p}: no calibration sequences (the file is empty)")
    log.info("calibration: %d sequences, %d tokens from %s", len(out),
             sum(s.tokens for s in out), p)
    return out
