"""``ssgr prune``: the command line of the streaming pruning engine.

Wire it with ``register(subparsers)`` from ``ssgr/cli.py``; ``python -m ssgr.prune ...`` runs the
same command stand-alone.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The ``prune`` options (shared by ``ssgr prune`` and ``python -m ssgr.prune``)."""
    s.add_argument("model", help="Hugging Face causal-LM directory (or hub id where reachable)")
    s.add_argument("--calib", required=True,
                   help='CALIB.jsonl: one {"input_ids": [...]} or {"text": "..."} per line')
    s.add_argument("--out", required=True, help="output model directory")
    s.add_argument("--method", default="sparsegpt", choices=["sparsegpt", "wanda", "magnitude"])
    s.add_argument("--sparsity", default="0.5", help="0.5 (unstructured), 2:4, 4:8 or N:M")
    s.add_argument("--targets", nargs="+", default=None, metavar="PATTERN",
                   help="modules to prune: globs on the full/in-layer/leaf name or re:REGEX "
                        "(default: every Linear in the decoder layers)")
    s.add_argument("--ignore", nargs="+", default=None, metavar="PATTERN",
                   help="modules to leave dense (same syntax as --targets)")
    s.add_argument("--blocksize", type=int, default=128)
    s.add_argument("--percdamp", type=float, default=0.01)
    s.add_argument("--sequential", default="module", choices=["layer", "module"])
    s.add_argument("--propagate", default="pruned", choices=["pruned", "dense"])
    s.add_argument("--scope", default="row", choices=["row", "layer"],
                   help="unstructured ratio per row or per layer (wanda, magnitude)")
    s.add_argument("--offload", default="auto", choices=["auto", "device", "cpu", "disk"])
    s.add_argument("--max-activation-memory", default="8GiB")
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    s.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command")
    s.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="save the activations for --resume every N layers (0: never)")
    s.add_argument("--max-sequences", type=int, default=None,
                   help="use only the first N calibration lines")
    s.add_argument("--backend", default=None, help="force an op backend (see `ssgr info`)")


def run(args: argparse.Namespace) -> int:
    """Run ``ssgr prune`` from parsed arguments; prints the table, returns 0."""
    from .engine import PruneConfig, prune_model
    from .report import format_table

    cfg = PruneConfig(
        model=args.model, calib=args.calib, out=args.out, method=args.method,
        sparsity=args.sparsity, targets=args.targets, ignore=args.ignore,
        blocksize=args.blocksize, percdamp=args.percdamp, sequential=args.sequential,
        propagate=args.propagate, offload=args.offload,
        max_activation_memory=args.max_activation_memory, device=args.device, dtype=args.dtype,
        scope=args.scope, overwrite=args.overwrite, resume=args.resume,
        checkpoint_every=args.checkpoint_every, max_sequences=args.max_sequences,
        backend=args.backend,
    )
    report = prune_model(cfg)
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
    """``python -m ssgr.prune``: the same command outside the ``ssgr`` entry point."""
    p = argparse.ArgumentParser(prog="python -m ssgr.prune", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(p)
    args = p.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
