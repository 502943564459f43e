"""What a float64 Cholesky factor would cost the ``cpu`` SparseGPT backend (issue #18 item 8).

The ``cpu`` backend factors the flipped, damped Hessian once in float32 (LAPACK ``spotrf``,
:func:`ssgr.ops.sparsegpt.cpu._flipped_cholesky`). Over SmolLM2-135M that factor flips 1.4x to
2.5x as many near-tie decisions as llm-compressor's fp32 path (``python
benchmarks/make_real_fixture.py --measure-model``); a float64 factor (L rounded to float32)
removes them. This script times both factors against llm-compressor 0.14's ``sparsify_weight``
(the peer) on the SparseGPT speed-goal shapes, paired: each round runs the peer, then ssgr with
the float32 factor, then with the float64 one, on the same ``W[r, c]`` and ``H[c, c]`` (float32,
seeded as in ``bench_sparsegpt.py``); the first round is a warm-up, and the result is the median
of the per-round ratios (peer seconds / ssgr seconds).

Usage: ``python benchmarks/factor_precision.py [--rounds 4]`` (about 4 minutes on 2 cores; needs
``llmcompressor``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch

from ssgr.compat.peers import llmcompressor_sparsify, peer_pattern
from ssgr.ops import _native, sparsegpt_prune
from ssgr.ops.sparsegpt import cpu

log = logging.getLogger("factor_precision")

SHAPES = [(4096, 4096), (2048, 5632)]  # bench_sparsegpt.py's SPARSEGPT_GOAL_LAYERS
PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"n": 2, "m": 4}}


def float64_factor(H: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    """``_flipped_cholesky`` with the factorisation in float64: ``L[c, c]`` float32 lower with
    ``J (H + damp I) J = L L^T`` to float64 accuracy before the final rounding."""
    Hf = _native.flip2d(H).double()
    Hf.diagonal().add_(damp)
    return torch.linalg.cholesky(Hf).float()


def _problem(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rows * 7 + cols)
    X = torch.randn(2 * cols, cols, generator=g)
    return torch.randn(rows, cols, generator=g), X.T @ X / X.shape[0]


def _seconds(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds per shape, the first a warm-up")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fp32_factor = cpu._flipped_cholesky
    for rows, cols in SHAPES:
        W, H = _problem(rows, cols)
        for name, kw in PATTERNS.items():
            peer, r32, r64 = [], [], []
            for i in range(args.rounds):
                tp = _seconds(llmcompressor_sparsify, W, H, *peer_pattern(**kw), blocksize=128)
                times = []
                for factor in (fp32_factor, float64_factor):
                    cpu._flipped_cholesky = factor
                    try:
                        times.append(_seconds(sparsegpt_prune, W, H, backend="cpu", **kw))
                    finally:
                        cpu._flipped_cholesky = fp32_factor
                if i:
                    peer.append(tp)
                    r32.append(tp / times[0])
                    r64.append(tp / times[1])
            log.info("%dx%d %s: peer %.2f s; ssgr cpu vs peer: float32 factor %.2fx, float64 "
                     "factor %.2fx", rows, cols, name, statistics.median(peer),
                     statistics.median(r32), statistics.median(r64))


if __name__ == "__main__":
    main()
