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

    from ssgr.data import cli as data_cli
    from ssgr.prune import cli as prune_cli

    data_cli.register(sub)
    prune_cli.register(sub)
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
