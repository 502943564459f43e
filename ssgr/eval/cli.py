"""The ``ssgr eval`` and ``ssgr ppl`` subcommands (wired by :func:`register`).

Each command is one options dataclass (:class:`EvalConfig`, :class:`PplConfig`; their fields are
the command-line options, built by :mod:`ssgr.options`) and one function taking it
(:func:`eval_command`, :func:`ppl_command`). The field names are the keyword names of
:func:`ssgr.eval.accuracy.evaluate` and :func:`ssgr.eval.perplexity.perplexity`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from ssgr.data.problems import SPLITS
from ssgr.eval.perplexity import TRACE_FILTERS
from ssgr.options import add_options, from_args, option

logger = logging.getLogger(__name__)

MODEL_HELP = "tiny (embedded), smollm2 (SmolLM2-135M-Instruct) or a local model directory"


@dataclasses.dataclass
class EvalConfig:
    """Options of ``ssgr eval``."""

    model: str = option(positional=True, help=MODEL_HELP)
    problems: str = option(help="problems jsonl or builtin:NAME (e.g. builtin:arith)")
    k: int = option(4, help="samples per problem")
    greedy: bool = option(False, help="one greedy sample per problem (k=1, T=0)")
    out: str | None = option(
        None, help="result JSON (samples go to OUT's stem + .traces.jsonl)"
    )
    traces: str | None = option(
        None, help="traces jsonl for the samples (default: beside --out)"
    )
    temperature: float = option(0.6, help="sampling temperature")
    top_p: float = option(0.95, help="nucleus sampling mass")
    max_new_tokens: int = option(32768, help="response token limit")
    seed: int = option(0, help="sampling seed")
    split: str = option(
        "heldout", choices=SPLITS, help="which side of the problem split to score"
    )
    heldout_fraction: float = option(0.2, help="held-out share of the problem split")
    split_seed: int = option(0, help="seed of the problem split")
    limit: int | None = option(None, help="only the first K problems (after the split)")
    batch_size: int = option(64, help="samples per generation batch")
    device: str | None = option(None, help="torch device (default cuda if present)")
    dtype: str | None = option(
        None, help="torch dtype name (default bf16 on GPU, fp32 on CPU)"
    )
    progress: bool = option(True, help="progress bar")


def eval_command(cfg: EvalConfig) -> dict[str, Any]:
    """Run ``ssgr eval`` (:func:`ssgr.eval.accuracy.evaluate`) and print its table.

    Raises :class:`~ssgr.errors.SSGRError` subclasses for bad input (unknown model, malformed
    problems file).
    """
    from ssgr.eval.accuracy import evaluate, format_ci_line, format_table

    kw = dataclasses.asdict(cfg)
    res = evaluate(kw.pop("model"), kw.pop("problems"), **kw)
    if res["greedy"]:
        mode = "greedy"
    else:
        mode = f"T {res['settings']['temperature']}, top-p {res['settings']['top_p']}"
    sys.stdout.write(
        f"eval {res['model']} on {res['problems']} ({res['split']}), k={res['k']}, {mode}\n"
    )
    sys.stdout.write(format_table(res) + "\n")
    ci_line = format_ci_line(res)
    if ci_line:
        sys.stdout.write(ci_line + "\n")
    if res["traces"]:
        sys.stdout.write(f"samples: {res['traces']}\n")
    return res


@dataclasses.dataclass
class PplConfig:
    """Options of ``ssgr ppl``."""

    model: str = option(positional=True, help=MODEL_HELP)
    corpus: str | None = option(
        None, help="wikitext, news, or a .jsonl ('text') / text file"
    )
    traces: str | None = option(
        None, help="TRACES.jsonl (e.g. the held-out samples of `ssgr eval`)"
    )
    traces_filter: str = option("all", choices=TRACE_FILTERS, help="which traces to score")
    window: int | None = option(None, help="scoring window (default: the model's context)")
    max_tokens: int | None = option(None, help="score only the first N corpus tokens")
    out: str | None = option(None, help="result JSON")
    device: str | None = option(None, help="torch device (default cuda if present)")
    dtype: str | None = option(None, help="torch dtype name")
    progress: bool = option(True, help="progress bar")


def ppl_command(cfg: PplConfig) -> dict[str, Any]:
    """Run ``ssgr ppl`` (:func:`ssgr.eval.perplexity.perplexity`) and print the result."""
    from ssgr.eval.perplexity import format_ppl, perplexity

    kw = dataclasses.asdict(cfg)
    res = perplexity(kw.pop("model"), **kw)
    sys.stdout.write(format_ppl(res) + "\n")
    if cfg.out is None:
        logger.debug("%s", json.dumps(res))
    return res


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``ppl`` to an argparse subparsers object."""
    e = subparsers.add_parser(
        "eval",
        help="pass@1 over k samples, response length and truncation by difficulty "
        "(held-out problems)",
        description="Sample k responses per held-out problem (T 0.6, top-p 0.95 by default), "
        "check them and print pass@1 (mean correctness over the k samples), mean response tokens "
        "and truncation rate, overall and by difficulty level. The samples go to a traces file "
        "(resumable; usable by `ssgr ppl --traces`).",
    )
    add_options(e, EvalConfig)
    e.set_defaults(func=lambda args: _done(eval_command(from_args(EvalConfig, args))))

    p = subparsers.add_parser(
        "ppl",
        help="perplexity on a text corpus and/or on self-generated traces",
        description="Token-level perplexity exp(mean NLL): on a corpus in non-overlapping "
        "windows of the model's context, and on the responses of a TRACES.jsonl given their "
        "prompts.",
    )
    add_options(p, PplConfig)
    p.set_defaults(func=lambda args: _done(ppl_command(from_args(PplConfig, args))))


def _done(_result: object) -> int:
    return 0
