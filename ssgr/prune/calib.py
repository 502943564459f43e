"""Calibration sets: ``CALIB.jsonl`` with one sequence per line.

Each line is a JSON object with ``"input_ids": [int, ...]`` or ``"text": "..."`` (tokenized with the
model's tokenizer, special tokens added as the tokenizer does by default). Sequences are never
padded together: each is run alone with batch 1.

Per-token fields: ``"attention_mask": [0/1, ...]`` (as long as the sequence) is honoured: masked
positions add nothing to Hessians or column norms. When its ones are one contiguous run (left
and/or right padding) the padding is dropped before the forward, so the run equals that of the
unpadded line bit for bit; any other mask (a hole inside) keeps every token in the forward (as
context) and excludes the masked positions from the statistics
(:attr:`CalibSequence.stat_positions`).

Response-only calibration (``calib_tokens="response"``, ``ssgr prune --calib-tokens response``):
every line must carry ``"prompt_tokens"`` (an int, written by ``ssgr select``): its first
``prompt_tokens`` positions (counted on the line's ``input_ids`` as written, before any padding
is removed) are the prompt and, like masked positions, run through the model as context but add
nothing to the statistics; only the response positions do. With an ``attention_mask`` on the same
line a position feeds the statistics when its mask is 1 **and** it lies in the response. A line
without ``"prompt_tokens"``, with a ``"text"`` field instead of ``"input_ids"`` (its positions
would depend on the tokenizer) or without any response position is refused with ``file:line``.
Other per-token fields (:data:`REFUSED_TOKEN_FIELDS`, or
any list as long as the sequence) are refused with ``file:line``, never ignored. Every other field
is kept as provenance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssgr.io import file_sha256 as io_file_sha256
from ssgr.io import iter_jsonl
from ssgr.models.checks import TOKENIZER_FILES

from .errors import CalibError, MissingFileError, PruneError

log = logging.getLogger(__name__)

MAX_TOKENS = 32768


#: Per-token fields a calibration line may not carry (ssgr cannot honour them).
REFUSED_TOKEN_FIELDS = ("labels", "position_ids", "token_type_ids", "loss_mask",
                        "special_tokens_mask", "cross_attention_mask")


@dataclass
class CalibSequence:
    """One calibration sequence: ``input_ids[1, t]`` (int64, CPU), its line and provenance.

    stat_positions: ``[k]`` int64 (CPU, ascending) positions whose activations feed the
    Hessians / column norms, None for all ``t``. Every position still runs through the model.
    """

    input_ids: torch.Tensor
    line: int
    provenance: dict = field(default_factory=dict)
    stat_positions: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        """Tokens run through the model."""
        return int(self.input_ids.shape[-1])

    @property
    def stat_tokens(self) -> int:
        """Tokens that feed the statistics."""
        return self.tokens if self.stat_positions is None else int(self.stat_positions.numel())


def apply_attention_mask(
    ids: list[int], mask, where: str
) -> tuple[list[int], torch.Tensor | None, int]:
    """Honour a line's ``attention_mask`` (see the module docstring).

    Returns:
        ``(ids, stat_positions, dropped)``: the ids to run (padding removed when the ones are
        contiguous), the statistics positions (None: all) and the number of padding tokens
        dropped.
    Raises:
        CalibError naming ``where`` (``file:line``) when the mask is not a list of 0/1 of the
        sequence's length, or masks every token.
    """
    if not isinstance(mask, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in mask
    ):
        raise CalibError(f"{where}: \"attention_mask\" must be a list of 0/1 ints")
    if len(mask) != len(ids):
        raise CalibError(f"{where}: \"attention_mask\" has {len(mask)} values but the sequence "
                         f"has {len(ids)} tokens; they must be equally long")
    ones = [i for i, v in enumerate(mask) if v]
    if not ones:
        raise CalibError(f"{where}: \"attention_mask\" masks every token (all 0); remove the "
                         "line")
    lo, hi = ones[0], ones[-1] + 1
    if hi - lo == len(ones):  # contiguous: padding on the left and/or the right
        return ids[lo:hi], None, len(ids) - len(ones)
    return ids, torch.tensor(ones, dtype=torch.long), 0


def response_positions(
    ids: list[int], mask, prompt_tokens, where: str
) -> tuple[list[int], torch.Tensor | None, int]:
    """:func:`apply_attention_mask` restricted to the response (positions ``>= prompt_tokens``
    of the line as written; ``mask`` None: no attention_mask).

    Returns:
        ``(ids, stat_positions, dropped)`` as :func:`apply_attention_mask`; ``stat_positions``
        is ``[k]`` int64 positions in the returned ``ids`` (None when every returned position is
        a response position).
    Raises:
        CalibError naming ``where`` when ``prompt_tokens`` is not an int in ``[0, len(ids))``,
        when no position is left, or as :func:`apply_attention_mask`.
    """
    if not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool) \
            or not 0 <= prompt_tokens < len(ids):
        raise CalibError(
            f"{where}: \"prompt_tokens\" must be an int in [0, {len(ids)}) (the number of prompt "
            f"tokens at the start of the line's {len(ids)} input_ids), got {prompt_tokens!r}; "
            "a line that is all prompt has no response to calibrate on: remove it"
        )
    if mask is None:
        ones, lo, dropped = list(range(len(ids))), 0, 0
    else:
        cut, pos, dropped = apply_attention_mask(ids, mask, where)
        ones = [i for i, v in enumerate(mask) if v]
        lo = ones[0] if pos is None else 0  # contiguous ones: ids cut to [ones[0], ones[-1]]
        ids = cut
    stat = [i - lo for i in ones if i >= prompt_tokens]
    if not stat:
        raise CalibError(
            f"{where}: no position is both in the response (at or after \"prompt_tokens\" = "
            f"{prompt_tokens}) and unmasked by \"attention_mask\"; remove the line"
        )
    if len(stat) == len(ids):
        return ids, None, dropped
    return ids, torch.tensor(stat, dtype=torch.long), dropped


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (:func:`ssgr.io.file_sha256`)."""
    return io_file_sha256(path)


#: Files whose presence in a model directory means it has a tokenizer.


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
    calib_tokens: str = "all",
) -> list[CalibSequence]:
    """Read and validate ``CALIB.jsonl``.

    Args:
        path: the jsonl file.
        vocab_size: token ids must lie in ``[0, vocab_size)``.
        max_tokens: longest allowed sequence (the model's context, at most 32768).
        tokenize: ``text -> ids`` for ``{"text": ...}`` lines; None makes text lines an error.
        max_sequences: keep only the first this many lines (None: all).
        calib_tokens: ``"all"`` or ``"response"`` (only positions at or after each line's
            ``"prompt_tokens"`` feed the statistics; see the module docstring).
    Returns:
        the sequences in file order.
    Raises:
        CalibError naming ``path:line`` for an empty, corrupt, too long or out-of-vocabulary line,
        a bad ``attention_mask``, a missing or bad ``"prompt_tokens"`` under
        ``calib_tokens="response"`` or an unsupported per-token field (the JSON itself is read by
        :func:`ssgr.io.iter_jsonl`); MissingFileError when ``path`` does not exist.
    """
    if calib_tokens not in ("all", "response"):
        raise PruneError(f"--calib-tokens must be all or response, got {calib_tokens!r}")
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(
            f"calibration file {p} does not exist; pass --calib CALIB.jsonl")
    out: list[CalibSequence] = []
    last = padded = holes = prompt_only = 0
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
            prov = {k: v for k, v in obj.items() if k not in ("input_ids", "attention_mask")}
        elif "text" in obj:
            if not isinstance(obj["text"], str):
                raise CalibError(f"{where}: \"text\" must be a string")
            if tokenize is None:
                raise CalibError(
                    f"{where}: a \"text\" line needs the model's tokenizer, but the model "
                    f"directory has none of {', '.join(TOKENIZER_FILES)}; give \"input_ids\" "
                    "instead or add the tokenizer files"
                )
            try:
                ids = list(tokenize(obj["text"]))
            except (ValueError, OSError) as exc:
                raise CalibError(f"{where}: {exc}") from None
            prov = {k: v for k, v in obj.items() if k not in ("text", "attention_mask")}
        else:
            raise CalibError(
                f"{where}: no \"input_ids\" or \"text\" field "
                f"(fields: {', '.join(obj) or 'none'})"
            )
        if not ids:
            raise CalibError(f"{where}: the sequence is empty (0 tokens); remove this line")
        for k, v in prov.items():
            if k in REFUSED_TOKEN_FIELDS or (isinstance(v, list) and len(v) == len(ids)
                                             and len(ids) > 1):
                raise CalibError(
                    f"{where}: per-token field \"{k}\" is not supported: ssgr calibrates on "
                    "every token, except positions an \"attention_mask\" sets to 0; remove the "
                    "field (or express it as attention_mask)"
                )
        pos = None
        if calib_tokens == "response":
            if "input_ids" not in obj:
                raise CalibError(
                    f"{where}: --calib-tokens response needs \"input_ids\" (a \"text\" line's "
                    "prompt positions depend on the tokenizer); write the set with `ssgr select "
                    "--tokenizer MODEL`"
                )
            if "prompt_tokens" not in obj:
                raise CalibError(
                    f"{where}: --calib-tokens response needs \"prompt_tokens\" (the number of "
                    "prompt tokens at the start of the line) on every line; re-run `ssgr select` "
                    "(it writes the field), add it, or use --calib-tokens all"
                )
            ids, pos, dropped = response_positions(
                ids, obj.get("attention_mask"), obj["prompt_tokens"], where)
            padded += dropped
            prompt_only += pos is not None
        elif "attention_mask" in obj:
            ids, pos, dropped = apply_attention_mask(ids, obj["attention_mask"], where)
            padded += dropped
            holes += pos is not None
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
        out.append(CalibSequence(torch.tensor([ids], dtype=torch.long), lineno, prov, pos))
    if not out:
        raise CalibError(f"{p}: no calibration sequences (the file is empty)")
    if padded:
        log.info("calibration: attention_mask padding removed (%d tokens)", padded)
    if holes:
        log.info("calibration: %d lines mask positions inside the sequence: those tokens run "
                 "through the model but add nothing to the statistics", holes)
    if calib_tokens == "response":
        log.info("calibration: --calib-tokens response: %d of %d tokens (the responses) feed the "
                 "statistics; prompts run as context only (%d lines)",
                 sum(s.stat_tokens for s in out), sum(s.tokens for s in out), prompt_only)
    log.info("calibration: %d sequences, %d tokens from %s", len(out),
             sum(s.tokens for s in out), p)
    return out
