"""The ``ssgr generate`` and ``ssgr select`` subcommands (wired by :func:`register`).

Each command is one options dataclass (:class:`GenerateConfig`, :class:`SelectConfig`, whose
fields are the command-line options, built by :mod:`ssgr.options`) and one function taking it
(:func:`generate_command`, :func:`select_command`). The field names are the keyword names of
:func:`ssgr.data.generate.generate` and :func:`ssgr.data.select.select`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ssgr.data.backends.base import GENERATORS
from ssgr.data.generate import GenerateStats
from ssgr.data.problems import SPLITS
from ssgr.data.select import STRATEGIES, SelectionResult
from ssgr.options import add_options, from_args, option

logger = logging.getLogger(__name__)

PROBLEMS_HELP = (
    "problems jsonl or builtin:NAME (arith, gsm-symbolic, basic-arithmetic, asdiv; "
    "options as builtin:arith?n=200&seed=0)"
)


@dataclasses.dataclass
class GenerateConfig:
    """Options of ``ssgr generate`` (paper defaults: 16 samples, T 0.6, top-p 0.95, 32768
    tokens)."""

    model: str = option(
        positional=True, help="model name or path (for --generator openai: the served model name)"
    )
    problems: str = option(help=PROBLEMS_HELP)
    out: str = option(help="traces jsonl to append to")
    generator: str = option(
        "hf", choices=GENERATORS, deprecated=["--backend"],
        help="generation backend: transformers (hf), vllm, or an OpenAI-compatible server",
    )
    server: str | None = option(None, help="OpenAI-compatible server URL (--generator openai)")
    n: int = option(16, help="samples per problem")
    temperature: float = option(0.6, help="sampling temperature (0: greedy)")
    top_p: float = option(0.95, help="nucleus sampling mass")
    max_new_tokens: int = option(32768, help="response token limit")
    batch_size: int | None = option(
        None, help="samples per generator call / concurrent requests (default: n for hf, 256 for "
        "vllm, 64 for openai)",
    )
    seed: int = option(0, help="sampling seed (per-sample seeds derive from it)")
    limit: int | None = option(None, help="only the first K problems")
    device: str | None = option(
        None, help="torch device for --generator hf (default cuda if present)"
    )
    dtype: str | None = option(
        None, help="torch dtype name for hf/vllm (default bf16 on GPU, fp32 on CPU)"
    )
    split: str = option(
        "all", choices=SPLITS,
        help="use only the calibration or held-out part of the problems",
    )
    heldout_fraction: float = option(0.2, help="held-out share of the problem split")
    split_seed: int = option(0, help="seed of the problem split")
    max_retries: int = option(5, help="openai generator: retries per request")
    request_timeout: float = option(
        600.0, help="openai generator: seconds per attempt before it is retried (a WARNING "
        "'still waiting for URL' comes every minute meanwhile)",
    )
    api: str | None = option(
        None, choices=("completions", "chat"),
        help="openai generator: endpoint (default completions when the tokenizer is local)",
    )
    tokenizer: str | None = option(
        None, help="openai generator: local tokenizer path to format prompts (default: MODEL)"
    )
    early_stop: bool = option(
        False, help="stop sampling a problem once more than tau=0.75 x n samples are correct (the "
        "SSGR rule drops it whatever comes; same ssgr selection, fewer samples)",
    )
    progress: bool = option(True, help="progress bar")


#: GenerateConfig fields that configure the openai generator (passed as its ``backend_kwargs``),
#: not arguments of :func:`ssgr.data.generate.generate`.
GENERATOR_OPTIONS = ("max_retries", "api", "tokenizer", "request_timeout")


def generate_command(cfg: GenerateConfig) -> GenerateStats:
    """Run ``ssgr generate``: :func:`ssgr.data.generate.generate` with the options of ``cfg``.

    Raises :class:`~ssgr.data.errors.DataError` (bad input) or
    :class:`~ssgr.data.errors.GenerationError` (the generator failed).
    """
    from ssgr.data.generate import generate

    kw = dataclasses.asdict(cfg)
    extra = {k: kw.pop(k) for k in GENERATOR_OPTIONS}
    st = generate(
        kw.pop("model"), kw.pop("problems"), kw.pop("out"), **kw,
        backend_kwargs=extra if cfg.generator == "openai" else None,
    )
    acc = st.correct / st.written if st.written else float("nan")
    logger.info(
        "generate: %d problems x %d = %d samples; %d already done, %d new (accuracy %.3f, "
        "%d flagged, %.1f tok/s)", st.problems, cfg.n, st.samples_total, st.skipped, st.written,
        acc, st.flagged, st.tokens / st.seconds if st.seconds else 0.0,
    )
    return st


@dataclasses.dataclass
class SelectConfig:
    """Options of ``ssgr select``."""

    out: str = option(help="calibration set to write (CALIB.jsonl)")
    strategy: str = option(choices=STRATEGIES, help="selection strategy")
    traces: str | None = option(
        None, positional=True, help="traces jsonl (not needed for --strategy text)"
    )
    tau: float = option(0.75, help="drop problems with correctness above tau")
    num_sequences: int = option(128, help="calibration sequences to keep")
    token_budget: int | None = option(None, help="cap on the total tokens")
    max_length: int = option(32768, help="truncate sequences to this many tokens")
    tokenizer: str | None = option(None, help="tokenizer (model path) to write input_ids")
    problems: str | None = option(
        None, help="problems jsonl with 'solution' (--strategy gold)"
    )
    corpus: str | None = option(None, help="wikitext, news or a FILE (--strategy text)")
    seed: int = option(0, help="selection seed")
    plot: bool = option(True, help="write CALIB.png beside the summary")


def select_command(cfg: SelectConfig) -> SelectionResult:
    """Run ``ssgr select``: :func:`ssgr.data.select.select` with the options of ``cfg``.

    Raises :class:`~ssgr.data.errors.DataError` for bad input.
    """
    from ssgr.data.select import select

    kw = dataclasses.asdict(cfg)
    res = select(kw.pop("traces"), kw.pop("strategy"), kw.pop("out"), **kw)
    sm = res.summary
    lines = [
        f"select {sm['strategy']}: {sm['selected']} sequences, {sm['selected_tokens']} tokens "
        f"-> {res.out}"
    ]
    for k, v in (sm.get("dropped") or {}).items():
        if v:
            lines.append(f"  dropped {k:<20} {v}")
    plot = f", plot {res.plot_path}" if res.plot_path else ""
    lines.append(f"  summary {res.summary_path}{plot}")
    logger.info("\n".join(lines))
    return res


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate`` and ``select`` to an argparse subparsers object."""
    g = subparsers.add_parser(
        "generate",
        help="sample responses to math problems and write checked traces (TRACES.jsonl)",
        description="Sample N responses per problem with the model's chat template, check the "
        "answers and append one line per sample to TRACES.jsonl. Re-running resumes.",
    )
    add_options(g, GenerateConfig)
    g.set_defaults(func=lambda args: _done(generate_command(from_args(GenerateConfig, args))))

    s = subparsers.add_parser(
        "select",
        help="select a calibration set (CALIB.jsonl) from traces by a strategy (ssgr, sgr, ...)",
        description="Write CALIB.jsonl (+ CALIB.summary.json and .png) from TRACES.jsonl.",
    )
    add_options(s, SelectConfig)
    s.set_defaults(func=lambda args: _done(select_command(from_args(SelectConfig, args))))


def _done(_result: object) -> int:
    return 0
