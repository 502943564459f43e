"""The ``ssgr`` command line (also ``python -m ssgr``).

Each subcommand is one options dataclass and one Python function taking it (``ssgr run``:
:class:`ssgr.run.RunConfig` and :func:`ssgr.run.run`; ``ssgr demo``: :class:`ssgr.demo.DemoConfig`
and :func:`ssgr.demo.run_demo`; ``generate`` / ``select`` in :mod:`ssgr.data.cli`; ``eval`` /
``ppl`` in :mod:`ssgr.eval.cli`; ``prune`` in :mod:`ssgr.prune.cli`): the parsers are built
from the dataclasses by :mod:`ssgr.options`, so every default is written once.

Errors: an :class:`ssgr.errors.SSGRError` (bad input, missing optional package, unavailable
backend) is reported as one ERROR line and exit status 2 (``-v`` adds its traceback); any other
exception is a bug or an environment fault and propagates with its full traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ssgr.errors import SSGRError
from ssgr.options import add_options, from_args

log = logging.getLogger("ssgr")


def _cmd_info(args: argparse.Namespace) -> int:
    from ssgr.info import info_text

    sys.stdout.write(info_text() + "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssgr.demo import DemoConfig, run_demo

    run_demo(from_args(DemoConfig, args))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ssgr.run import RunConfig, format_results, run

    cfg = from_args(RunConfig, args)
    results = run(cfg)
    sys.stdout.write(format_results(results) + "\n")
    plot = f", {results['plot']}" if results.get("plot") else " (no plot: matplotlib missing)"
    sys.stdout.write(f"results: {cfg.out}/results.json{plot}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand."""
    from ssgr.data import cli as data_cli
    from ssgr.demo import DemoConfig
    from ssgr.eval import cli as eval_cli
    from ssgr.prune import cli as prune_cli
    from ssgr.run import RunConfig

    p = argparse.ArgumentParser(prog="ssgr", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more logging: -v for DEBUG messages and the traceback of a reported error",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="backends, devices and the op x backend support matrix")
    s.set_defaults(func=_cmd_info)

    from ssgr.ops import selftest

    selftest.register(sub)

    s = sub.add_parser(
        "demo", help="prune a small random-init Llama in memory (SparseGPT 2:4 by default)"
    )
    add_options(s, DemoConfig)
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser(
        "run",
        help="the main job: generate -> select -> prune -> eval for several calibration sources",
    )
    add_options(s, RunConfig)
    s.set_defaults(func=_cmd_run)

    data_cli.register(sub)
    prune_cli.register(sub)
    eval_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssgr`` command; returns the exit status (2 for an SSGRError)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SSGRError as exc:
        log.error("%s", exc, exc_info=args.verbose > 0)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
