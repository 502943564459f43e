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

SERVER_HELP = (
    "OpenAI-compatible server URL (--generator openai); repeat it or separate URLs by commas "
    "to spread the requests over several servers (replicas of the model)"
)
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
    server: str | list[str] | None = option(None, help=SERVER_HELP)
    n: int = option(16, short="-n", help="samples per problem (write -n after torchrun, whose "
                    "parser mistakes --n for one of its own options)")
    temperature: float = option(0.6, help="sampling temperature (0: greedy)")
    top_p: float = option(0.95, help="nucleus sampling mass")
    max_new_tokens: int = option(32768, help="response token limit")
    batch_size: int | None = option(
        None, help="samples per generator call / concurrent requests (default: n for hf, 256 for "
        "vllm, 64 for openai or servers x --concurrency-per-server when that is more)",
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
    concurrency_per_server: int | None = option(
        None, help="openai generator: most requests in flight on one server (default: no cap "
        "beyond --batch-size; requests go to the server with the fewest outstanding)",
    )
    tensor_parallel_size: int | None = option(
        None, help="vllm generator: GPUs the model is split over (vLLM's default: 1)"
    )
    data_parallel_size: int | None = option(
        None, help="vllm generator: engine replicas, one per GPU group (vLLM's default: 1)"
    )
    dist_timeout: float = option(
        7200.0, help="under torchrun: seconds a rank waits for the others before the merge "
        "(give the slowest shard's generation time)",
    )
    early_stop: bool = option(
        False, help="stop sampling a problem once more than tau=0.75 x n samples are correct (the "
        "SSGR rule drops it whatever comes; same ssgr selection, fewer samples)",
    )
    progress: bool = option(True, help="progress bar")


#: GenerateConfig fields that configure the openai generator (passed as its ``backend_kwargs``).
OPENAI_OPTIONS = ("max_retries", "api", "tokenizer", "request_timeout", "concurrency_per_server")
#: GenerateConfig fields that configure the vllm generator (passed as its ``backend_kwargs``).
VLLM_OPTIONS = ("tensor_parallel_size", "data_parallel_size")
#: GenerateConfig fields of a run under torchrun (:func:`ssgr.data.shard.generate_sharded`).
SHARD_OPTIONS = ("dist_timeout",)
#: GenerateConfig fields that are not arguments of :func:`ssgr.data.generate.generate`.
GENERATOR_OPTIONS = OPENAI_OPTIONS + VLLM_OPTIONS + SHARD_OPTIONS


def generate_command(cfg: GenerateConfig) -> GenerateStats:
    """Run ``ssgr generate``: :func:`ssgr.data.generate.generate` with the options of ``cfg``.

    Under torchrun (``RANK`` / ``WORLD_SIZE`` > 1 in the environment) the problems are sharded
    over the ranks and merged by rank 0 (:func:`ssgr.data.shard.generate_sharded`). Several
    servers (``server`` a list, or comma-separated) are spread over by the openai generator.

    Raises :class:`~ssgr.data.errors.DataError` (bad input) or
    :class:`~ssgr.data.errors.GenerationError` (the generator failed).
    """
    from ssgr.data.generate import generate
    from ssgr.data.shard import dist_env, generate_sharded

    kw = dataclasses.asdict(cfg)
    openai_kw = {k: kw.pop(k) for k in OPENAI_OPTIONS}
    vllm_kw = {k: kw.pop(k) for k in VLLM_OPTIONS}
    shard_kw = {k: kw.pop(k) for k in SHARD_OPTIONS}
    _check_generator_options(cfg, vllm_kw)
    if cfg.generator == "openai":
        from ssgr.data.backends.openai import parse_servers

        servers = parse_servers(cfg.server)
        kw["server"] = ",".join(servers)
        per = cfg.concurrency_per_server
        if cfg.batch_size is None and per is not None and per * len(servers) > 64:
            kw["batch_size"] = per * len(servers)
    elif isinstance(cfg.server, list):
        kw["server"] = ",".join(cfg.server)
    extra = {"openai": openai_kw, "vllm": vllm_kw}.get(cfg.generator)
    ranks = dist_env()
    if ranks is not None:
        st = generate_sharded(
            kw.pop("model"), kw.pop("problems"), kw.pop("out"), rank=ranks[0],
            world_size=ranks[1], **kw, **shard_kw, backend_kwargs=extra,
        )
        if ranks[0] != 0:
            return st  # INFO from rank 0 only
    else:
        st = generate(kw.pop("model"), kw.pop("problems"), kw.pop("out"), **kw,
                      backend_kwargs=extra)
    acc = st.correct / st.written if st.written else float("nan")
    logger.info(
        "generate: %d problems x %d = %d samples; %d already done, %d new (accuracy %.3f, "
        "%d flagged, %.1f tok/s)", st.problems, cfg.n, st.samples_total, st.skipped, st.written,
        acc, st.flagged, st.tokens / st.seconds if st.seconds else 0.0,
    )
    return st


def _check_generator_options(cfg: GenerateConfig, vllm_kw: dict[str, int | None]) -> None:
    """Refuse generator options given to another generator."""
    from ssgr.data.errors import DataError

    for name, value in vllm_kw.items():
        if value is not None and cfg.generator != "vllm":
            flag = "--" + name.replace("_", "-")
            raise DataError(
                f"{flag} is for --generator vllm (in-process vLLM); for --generator openai set it "
                f"on each server (vllm serve {flag} ...); --generator hf uses one device"
            )
    if cfg.concurrency_per_server is not None and cfg.generator != "openai":
        raise DataError("--concurrency-per-server is for --generator openai")


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
    add_options(g, GenerateConfig, exclude=("server",))
    g.add_argument("--server", dest="server", action="extend", type=_urls, default=None,
                   metavar="URL[,URL...]", help=SERVER_HELP)
    g.set_defaults(func=lambda args: _done(generate_command(from_args(GenerateConfig, args))))

    s = subparsers.add_parser(
        "select",
        help="select a calibration set (CALIB.jsonl) from traces by a strategy (ssgr, sgr, ...)",
        description="Write CALIB.jsonl (+ CALIB.summary.json and .png) from TRACES.jsonl.",
    )
    add_options(s, SelectConfig)
    s.set_defaults(func=lambda args: _done(select_command(from_args(SelectConfig, args))))


def _urls(text: str) -> list[str]:
    """One ``--server`` value: URLs separated by commas."""
    return [u.strip() for u in text.split(",") if u.strip()]


def _done(_result: object) -> int:
    return 0
