"""The two Cholesky factors of the ``cpu`` SparseGPT backend, timed against llm-compressor
(issue #18 item 8).

The ``cpu`` backend factors the flipped, damped Hessian once (:func:`ssgr.ops.sparsegpt.cpu.
_flipped_cholesky`): in float64 by default (LAPACK ``dpotrf``, L rounded to float32), or in
float32 with ``SSGR_SPARSEGPT_FACTOR=float32`` (``spotrf``). Over SmolLM2-135M the float32 factor
flips more near-tie decisions than llm-compressor's fp32 path and the float64 one far fewer
(``python benchmarks/make_real_fixture.py --measure-model``); this script measures what the
float64 factor costs. It times both against llm-compressor 0.14's ``sparsify_weight`` (the peer)
on the SparseGPT speed-goal shapes, paired: each round runs the peer, then ssgr with the float32
factor, then with the float64 one, on the same ``W[r, c]`` and ``H[c, c]`` (float32, seeded as
in ``bench_sparsegpt.py``); the first round is a warm-up, and the result is the median of the
per-round ratios (peer seconds / ssgr seconds).

Usage: ``python benchmarks/factor_precision.py [--rounds 4]`` (about 4 minutes on 2 cores; needs
``llmcompressor``).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable

import torch

from ssgr.compat.peers import llmcompressor_sparsify, peer_pattern
from ssgr.ops import sparsegpt_prune
from ssgr.ops.sparsegpt._common import FACTOR_ENV

log = logging.getLogger("factor_precision")

SHAPES = [(4096, 4096), (2048, 5632)]  # bench_sparsegpt.py's SPARSEGPT_GOAL_LAYERS
PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"n": 2, "m": 4}}


def _problem(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rows * 7 + cols)
    X = torch.randn(2 * cols, cols, generator=g)
    return torch.randn(rows, cols, generator=g), X.T @ X / X.shape[0]


def _seconds(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def _ssgr_seconds(factor: str, W: torch.Tensor, H: torch.Tensor, kw: dict) -> float:
    """One ``cpu`` backend call with ``SSGR_SPARSEGPT_FACTOR=factor`` (the caller's value is
    restored)."""
    old = os.environ.get(FACTOR_ENV)
    os.environ[FACTOR_ENV] = factor
    try:
        return _seconds(sparsegpt_prune, W, H, backend="cpu", **kw)
    finally:
        if old is None:
            del os.environ[FACTOR_ENV]
        else:
            os.environ[FACTOR_ENV] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds per shape, the first a warm-up")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for rows, cols in SHAPES:
        W, H = _problem(rows, cols)
        for name, kw in PATTERNS.items():
            peer, r32, r64, t32, t64 = [], [], [], [], []
            for i in range(args.rounds):
                tp = _seconds(llmcompressor_sparsify, W, H, *peer_pattern(**kw), blocksize=128)
                a, b = (_ssgr_seconds(f, W, H, kw) for f in ("float32", "float64"))
                if i:
                    peer.append(tp)
                    t32.append(a)
                    t64.append(b)
                    r32.append(tp / a)
                    r64.append(tp / b)
            log.info("%dx%d %s: peer %.2f s; ssgr cpu, float32 factor %.3f s = %.2fx, float64 "
                     "factor (default) %.3f s = %.2fx", rows, cols, name,
                     statistics.median(peer), statistics.median(t32), statistics.median(r32),
                     statistics.median(t64), statistics.median(r64))


if __name__ == "__main__":
    main()
