"""The ``ssgr eval`` and ``ssgr ppl`` subcommands (wired by :func:`register`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ssgr.data.errors import BackendError, DataError

logger = logging.getLogger(__name__)

MODEL_HELP = "tiny (embedded), smollm2 (SmolLM2-135M-Instruct) or a local model directory"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``ppl`` to an argparse subparsers object."""
    from ssgr.data.problems import SPLITS
    from ssgr.eval.perplexity import TRACE_FILTERS

    e = subparsers.add_parser(
        "eval",
        help="pass@1 over k samples, response length and truncation by difficulty (held-out problems)",
        description="Sample k responses per held-out problem (T 0.6, top-p 0.95 by default), check "
        "them and print pass@1 (mean correctness over the k samples), mean response tokens and "
        "truncation rate, overall and by difficulty level. The samples go to a traces file "
        "(resumable; usable by `ssgr ppl --traces`).",
    )
    e.add_argument("model", help=MODEL_HELP)
    e.add_argument("--problems", required=True, help="problems jsonl or builtin:NAME (e.g. builtin:arith)")
    e.add_argument("--k", type=int, default=4, help="samples per problem (default 4)")
    e.add_argument("--greedy", action="store_true", help="one greedy sample per problem (k=1, T=0)")
    e.add_argument("--out", default=None, help="result JSON (samples go to OUT's stem + .traces.jsonl)")
    e.add_argument("--traces", default=None, help="traces jsonl for the samples (default: beside --out)")
    e.add_argument("--temperature", type=float, default=0.6)
    e.add_argument("--top-p", type=float, default=0.95)
    e.add_argument("--max-new-tokens", type=int, default=32768)
    e.add_argument("--seed", type=int, default=0, help="sampling seed")
    e.add_argument("--split", choices=SPLITS, default="heldout",
                   help="which side of the problem split to score (default heldout)")
    e.add_argument("--heldout-fraction", type=float, default=0.2)
    e.add_argument("--split-seed", type=int, default=0)
    e.add_argument("--limit", type=int, default=None, help="only the first K problems (after the split)")
    e.add_argument("--batch-size", type=int, default=64, help="samples per generation batch (default 64)")
    e.add_argument("--device", default=None, help="torch device (default cuda if present)")
    e.add_argument("--dtype", default=None, help="torch dtype name (default bf16 on GPU, fp32 on CPU)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_eval_cmd)

    p = subparsers.add_parser(
        "ppl",
        help="perplexity on a text corpus and/or on self-generated traces",
        description="Token-level perplexity exp(mean NLL): on a corpus in non-overlapping windows "
        "of the model's context, and on the responses of a TRACES.jsonl given their prompts.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--corpus", default=None, help="wikitext, news, or a .jsonl ('text') / text file")
    p.add_argument("--traces", default=None, help="TRACES.jsonl (e.g. the held-out samples of `ssgr eval`)")
    p.add_argument("--traces-filter", choices=TRACE_FILTERS, default="all")
    p.add_argument("--window", type=int, default=None, help="scoring window (default: the model's context)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N corpus tokens")
    p.add_argument("--out", default=None, help="result JSON")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_ppl_cmd)


def _eval_cmd(args: argparse.Namespace) -> int:
    from ssgr.eval.accuracy import evaluate, format_table

    try:
        res = evaluate(
            args.model, args.problems, k=args.k, greedy=args.greedy, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed, split=args.split,
            heldout_fraction=args.heldout_fraction, split_seed=args.split_seed, limit=args.limit,
            batch_size=args.batch_size, device=args.device, dtype=args.dtype, out=args.out,
            traces=args.traces, progress=not args.no_progress,
        )
    except (DataError, BackendError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2
    mode = "greedy" if res["greedy"] else f"T {res['settings']['temperature']}, top-p {res['settings']['top_p']}"
    sys.stdout.write(f"eval {res['model']} on {res['problems']} ({res['split']}), k={res['k']}, {mode}\n")
    sys.stdout.write(format_table(res) + "\n")
    if res["traces"]:
        sys.stdout.write(f"samples: {res['traces']}\n")
    return 0


def _ppl_cmd(args: argparse.Namespace) -> int:
    from ssgr.eval.perplexity import format_ppl, perplexity

    try:
        res = perplexity(
            args.model, corpus=args.corpus, traces=args.traces, traces_filter=args.traces_filter,
            window=args.window, max_tokens=args.max_tokens, device=args.device, dtype=args.dtype,
            out=args.out, progress=not args.no_progress,
        )
    except (DataError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2
    sys.stdout.write(format_ppl(res) + "\n")
    if args.out is None:
        logger.debug("%s", json.dumps(res))
    return 0
