"""The ``ssgr generate`` and ``ssgr select`` subcommands (wired by :func:`register`)."""

from __future__ import annotations

import argparse
import logging

from ssgr.data.errors import BackendError, DataError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate`` and ``select`` to an argparse subparsers object."""
    from ssgr.data.backends.base import BACKENDS
    from ssgr.data.problems import SPLITS
    from ssgr.data.select import STRATEGIES

    g = subparsers.add_parser(
        "generate",
        help="sample responses to math problems and write checked traces (TRACES.jsonl)",
        description="Sample N responses per problem with the model's chat template, check the "
        "answers and append one line per sample to TRACES.jsonl. Re-running resumes.",
    )
    g.add_argument("model", help="model name or path (for --backend openai: the served model name)")
    g.add_argument("--problems", required=True, help="problems jsonl or builtin:NAME "
                   "(arith, gsm-symbolic, basic-arithmetic, asdiv; options as builtin:arith?n=200&seed=0)")
    g.add_argument("--out", required=True, help="traces jsonl to append to")
    g.add_argument("--backend", choices=BACKENDS, default="hf")
    g.add_argument("--server", default=None, help="OpenAI-compatible server URL (--backend openai)")
    g.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-new-tokens", type=int, default=32768)
    g.add_argument("--batch-size", type=int, default=None,
                   help="samples per backend call / concurrent requests (default: n for hf, "
                   "256 for vllm, 64 for openai)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (per-sample seeds derive from it)")
    g.add_argument("--limit", type=int, default=None, help="only the first K problems")
    g.add_argument("--device", default=None, help="torch device for --backend hf (default cuda if present)")
    g.add_argument("--dtype", default=None, help="torch dtype name for hf/vllm (default bf16 on GPU, fp32 on CPU)")
    g.add_argument("--split", choices=SPLITS, default="all",
                   help="use only the calibration or held-out part of the problems (default all)")
    g.add_argument("--heldout-fraction", type=float, default=0.2)
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--max-retries", type=int, default=5, help="openai backend: retries per request")
    g.add_argument("--api", choices=("completions", "chat"), default=None,
                   help="openai backend: endpoint (default completions when the tokenizer is local)")
    g.add_argument("--tokenizer", default=None,
                   help="openai backend: local tokenizer path to format prompts (default: MODEL)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate_cmd)

    s = subparsers.add_parser(
        "select",
        help="select a calibration set (CALIB.jsonl) from traces by a strategy (ssgr, sgr, ...)",
        description="Write CALIB.jsonl (+ CALIB.summary.json and .png) from TRACES.jsonl.",
    )
    s.add_argument("traces", nargs="?", default=None, help="traces jsonl (not needed for --strategy text)")
    s.add_argument("--strategy", required=True, choices=STRATEGIES)
    s.add_argument("--out", required=True)
    s.add_argument("--tau", type=float, default=0.75, help="drop problems with correctness above tau")
    s.add_argument("--num-sequences", type=int, default=128)
    s.add_argument("--token-budget", type=int, default=None, help="cap on the total tokens")
    s.add_argument("--max-length", type=int, default=32768, help="truncate sequences to this many tokens")
    s.add_argument("--tokenizer", default=None, help="tokenizer (model path) to write input_ids")
    s.add_argument("--problems", default=None, help="problems jsonl with 'solution' (--strategy gold)")
    s.add_argument("--corpus", default=None, help="wikitext, news or a FILE (--strategy text)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-plot", action="store_true")
    s.set_defaults(func=_select_cmd)


def _generate_cmd(args: argparse.Namespace) -> int:
    from ssgr.data.generate import generate

    try:
        st = generate(
            args.model, args.problems, args.out, backend=args.backend, server=args.server, n=args.n,
            temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, seed=args.seed, limit=args.limit, device=args.device,
            split=args.split, heldout_fraction=args.heldout_fraction, split_seed=args.split_seed,
            dtype=args.dtype, progress=not args.no_progress,
            backend_kwargs={"max_retries": args.max_retries, "api": args.api, "tokenizer": args.tokenizer}
            if args.backend == "openai" else None,
        )
    except (DataError, BackendError) as e:
        logger.error("%s", e)
        return 2
    acc = st.correct / st.written if st.written else float("nan")
    logger.info(
        "generate: %d problems x %d = %d samples; %d already done, %d new (accuracy %.3f, %d flagged, "
        "%.1f tok/s)", st.problems, args.n, st.samples_total, st.skipped, st.written, acc, st.flagged,
        st.tokens / st.seconds if st.seconds else 0.0,
    )
    return 0


def _select_cmd(args: argparse.Namespace) -> int:
    from ssgr.data.select import select

    try:
        res = select(
            args.traces, args.strategy, args.out, tau=args.tau, num_sequences=args.num_sequences,
            token_budget=args.token_budget, max_length=args.max_length, tokenizer=args.tokenizer,
            problems=args.problems, corpus=args.corpus, seed=args.seed, plot=not args.no_plot,
        )
    except DataError as e:
        logger.error("%s", e)
        return 2
    sm = res.summary
    lines = [f"select {sm['strategy']}: {sm['selected']} sequences, {sm['selected_tokens']} tokens -> {res.out}"]
    for k, v in (sm.get("dropped") or {}).items():
        if v:
            lines.append(f"  dropped {k:<20} {v}")
    lines.append(f"  summary {res.summary_path}" + (f", plot {res.plot_path}" if res.plot_path else ""))
    logger.info("\n".join(lines))
    return 0
