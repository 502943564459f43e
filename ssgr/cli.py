"""The ``ssgr`` command line (also ``python -m ssgr``). Each subcommand is a Python function too."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("ssgr")


def _cmd_info(args: argparse.Namespace) -> int:
    from ssgr.info import info_text

    sys.stdout.write(info_text() + "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssgr.demo import run_demo

    run_demo(
        sparsity=args.sparsity,
        method=args.method,
        layers=args.layers,
        hidden=args.hidden,
        sequences=args.sequences,
        seq_len=args.seq_len,
        seed=args.seed,
        backend=args.backend,
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ssgr.run import RunConfig, format_results, run

    cfg = RunConfig(
        model=args.model, method=args.method, sparsity=args.sparsity, out=args.out, quick=args.quick,
        sources=args.sources.split(","), ablations=args.ablations, problems=args.problems,
        n=args.n, calib_problems=args.calib_problems, eval_problems=args.eval_problems, k=args.k,
        max_new_tokens=args.max_new_tokens, num_sequences=args.num_sequences, tau=args.tau,
        corpus=args.corpus, backend=args.backend, device=args.device, seed=args.seed,
    )
    results = run(cfg)
    sys.stdout.write(format_results(results) + "\n")
    sys.stdout.write(f"results: {args.out}/results.json, {args.out}/results.png\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand."""
    p = argparse.ArgumentParser(prog="ssgr", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="backends, devices and the op x backend support matrix")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser(
        "demo", help="prune a small random-init Llama in memory (SparseGPT 2:4 by default)"
    )
    s.add_argument("--sparsity", default="2:4", help="0.5, 2:4, 4:8, N:M (default 2:4)")
    s.add_argument("--method", default="sparsegpt", choices=["sparsegpt", "wanda", "magnitude"])
    s.add_argument("--layers", type=int, default=2)
    s.add_argument("--hidden", type=int, default=128)
    s.add_argument("--sequences", type=int, default=8)
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", default=None, help="force a backend (see `ssgr info`)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser(
        "run",
        help="the main job: generate -> select -> prune -> eval for several calibration sources",
    )
    s.add_argument("--model", default="tiny", help="tiny (embedded), smollm2, or a model directory")
    s.add_argument("--method", default="sparsegpt", choices=["sparsegpt", "wanda", "magnitude"])
    s.add_argument("--sparsity", default="2:4", help="0.5, 2:4, 4:8, N:M (default 2:4)")
    s.add_argument("--out", default="runs/main", help="run directory (reused when re-run)")
    s.add_argument("--quick", action="store_true", help="small sizes (CI runs this)")
    s.add_argument("--sources", default=",".join(("text", "gold", "sgr", "ssgr")),
                   help="comma-separated calibration sources (select strategies)")
    s.add_argument("--ablations", action="store_true",
                   help="add easy, medium, hard, short, long and no-think")
    s.add_argument("--problems", default="builtin:arith")
    s.add_argument("--n", type=int, default=None, help="samples per calibration problem")
    s.add_argument("--calib-problems", type=int, default=None)
    s.add_argument("--eval-problems", type=int, default=None)
    s.add_argument("--k", type=int, default=None, help="samples per held-out problem (pass@1 over k)")
    s.add_argument("--max-new-tokens", type=int, default=None)
    s.add_argument("--num-sequences", type=int, default=None, help="calibration sequences per source")
    s.add_argument("--tau", type=float, default=0.75)
    s.add_argument("--corpus", default="news", help="generic text for the text source and text ppl")
    s.add_argument("--backend", default="hf", choices=["hf", "vllm", "openai"])
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_run)

    from ssgr.data import cli as data_cli
    from ssgr.eval import cli as eval_cli
    from ssgr.prune import cli as prune_cli

    data_cli.register(sub)
    prune_cli.register(sub)
    eval_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssgr`` command."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
