"""``ssgr prune``: the command line of the streaming pruning engine.

Wire it with ``register(subparsers)`` from ``ssgr/cli.py``; ``python -m ssgr.prune ...`` runs the
same command stand-alone. The options are the fields of
:class:`~ssgr.prune.config.PruneConfig` (:func:`ssgr.options.add_options`): a default or help
text is written there once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ssgr.errors import SSGRError
from ssgr.options import add_options, from_args

from .config import PruneConfig

log = logging.getLogger(__name__)


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The ``prune`` options (shared by ``ssgr prune`` and ``python -m ssgr.prune``), built from
    :class:`PruneConfig`."""
    add_options(s, PruneConfig)


def run(args: argparse.Namespace) -> int:
    """Run ``ssgr prune`` from parsed arguments; prints the table (rank 0 only under torchrun),
    returns 0.

    Raises:
        the errors of :func:`ssgr.prune.engine.prune_model`.
    """
    from .dist import torchrun_env
    from .engine import prune_model
    from .report import format_table

    report = prune_model(from_args(PruneConfig, args))
    env = torchrun_env()
    if env is None or env.rank == 0:  # under torchrun rank 0 prints the table
        sys.stdout.write(format_table(report) + "\n")
    return 0


def register(subparsers) -> None:
    """Add the ``prune`` subcommand to ``ssgr``'s subparsers."""
    s = subparsers.add_parser(
        "prune", help="prune a causal LM layer by layer (SparseGPT / Wanda / magnitude)",
        description="Streaming per-layer pruning calibrated on CALIB.jsonl; writes a pruned model "
                    "directory and DIR/prune_report.json.")
    add_arguments(s)
    s.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """``python -m ssgr.prune``: the same command outside the ``ssgr`` entry point.

    Logging is INFO (``-v``: DEBUG). An :class:`~ssgr.errors.SSGRError` (bad input or state; its
    message names the fix) is logged as one ERROR line, with its traceback under ``-v``, and
    gives exit status 2; any other exception (a bug, a kernel or CUDA failure) propagates with
    its traceback.
    """
    p = argparse.ArgumentParser(prog="python -m ssgr.prune", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="DEBUG logging, and tracebacks of ssgr's own errors")
    add_arguments(p)
    args = p.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except SSGRError as exc:
        log.error("%s", exc, exc_info=args.verbose > 0)
        return 2
