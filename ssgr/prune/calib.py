"""Calibration sets: ``CALIB.jsonl`` with one sequence per line.

Each line is a JSON object with ``"input_ids": [int, ...]`` or ``"text": "..."`` (tokenized with the
model's tokenizer, special tokens added as the tokenizer does by default). Every other field is
kept as provenance. Sequences are never padded together: each is run alone with batch 1.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssgr.io import iter_jsonl

from .errors import CalibError, MissingFileError, PruneError

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


#: Files whose presence in a model directory means it has a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def model_tokenizer(folder: Path) -> Callable[[str], list[int]] | None:
    """``text -> input_ids`` with the model directory's own tokenizer (special tokens added as
    the tokenizer does by default), loaded on the first call; None when the directory has no
    tokenizer files.

    Raises (on the first call):
        PruneError when transformers cannot load the tokenizer.
    """
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        return None
    loaded: list = []

    def tokenize(text: str) -> list[int]:
        if not loaded:
            from transformers import AutoTokenizer

            try:
                loaded.append(AutoTokenizer.from_pretrained(folder))
            except (OSError, ValueError) as exc:
                raise PruneError(f"{folder}: cannot load the tokenizer for \"text\" "
                                 f"calibration lines ({exc}); give \"input_ids\"") from None
        return loaded[0](text)["input_ids"]

    return tokenize


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
        CalibError naming ``path:line`` for an empty, corrupt, too long or out-of-vocabulary line
        (the JSON itself is read by :func:`ssgr.io.iter_jsonl`); MissingFileError when ``path``
        does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(
            f"calibration file {p} does not exist; pass --calib CALIB.jsonl")
    out: list[CalibSequence] = []
    last = 0
    for lineno, obj in iter_jsonl(p, "calibration", error=CalibError):
        if max_sequences is not None and len(out) >= max_sequences:
            break
        if lineno != last + 1:  # iter_jsonl skips blank lines; a calibration set has none
            raise CalibError(
                f"{p}:{last + 1}: empty line; every line must be a JSON object with "
                "\"input_ids\" or \"text\" (remove blank lines)"
            )
        last = lineno
        where = f"{p}:{lineno}"
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
