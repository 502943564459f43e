"""SparseGPT (blocked OBS) on real layer shapes: ssgr backends vs llm-compressor's
``sparsify_weight`` (the peer) in the same run. Each group is one shape and pattern; the ratios are
read from the group (``benchmarks/report.py``). Results are checked to agree with the peer.

Implementations: "llm-compressor", and every ssgr backend available on this device ("reference",
ssgr's pure-torch backend, and "cpu"; "triton" and "cuda" on a GPU). Shapes: the speed-goal
shapes 4096x4096 and 2048x5632 (groups "sparsegpt 4096x4096 50% cpu", ...) and, from
``shapes.py``, all SmolLM2-135M shapes and Qwen2.5-1.5B attention on CPU, Qwen2.5-7B and
R1-Distill-Qwen-14B on a GPU. The problem is ``H = X^T X / n`` for ``X[2 * cols, cols]`` and a
random W, one seed per shape.

The speed-goal shapes are also measured paired (``test_sparsegpt_paired``, op
"sparsegpt-paired"): each timed round of an ssgr backend runs right after one round of the peer,
so load that comes and goes on a shared machine over minutes hits both sides of a pair alike; the
result is the median of the per-round ratios (peer seconds / ssgr seconds).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import pytest
import torch
from shapes import (
    DEVICE,
    PAIRED_LAYERS,
    SMOKE,
    SPARSEGPT_LAYERS,
    Layer,
    backends,
    budget_rounds,
    rounds,
    warmup,
)

from ssgr.ops import sparsegpt_prune

PATTERNS = {"50%": dict(sparsity=0.5), "2:4": dict(n=2, m=4)}
PEER = "llm-compressor"
IMPLS = [PEER] + backends("sparsegpt")
# the pure-torch reference is as slow as the peer (seconds per call at the speed-goal shapes)
SLOW_REFERENCE_NUMEL = 4 << 20


@functools.lru_cache(maxsize=1)
def _problem(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, H)``, kept for the next test of the same shape (impls run innermost)."""
    g = torch.Generator(device=DEVICE).manual_seed(rows * 7 + cols)
    X = torch.randn(2 * cols, cols, device=DEVICE, generator=g)
    H = X.T @ X / X.shape[0]
    W = torch.randn(rows, cols, device=DEVICE, generator=g)
    return W, H


def _peer(W: torch.Tensor, H: torch.Tensor, kw: dict) -> torch.Tensor:
    """llm-compressor's result for ssgr's pattern ``kw`` (blocksize 128, percdamp 0.01)."""
    from ssgr.compat.peers import llmcompressor_sparsify, peer_pattern

    return llmcompressor_sparsify(W, H, *peer_pattern(**kw), blocksize=128)[0]


_PEER_OUT: dict[tuple[int, int, str], torch.Tensor] = {}


def _peer_result(layer: Layer, pattern: str, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """The peer's weights for this problem: the peer test's output when it ran just before (the
    peer runs first in each group), else computed now. Holds one result at a time."""
    key = (layer.rows, layer.cols, pattern)
    if key not in _PEER_OUT:
        _PEER_OUT.clear()
        _PEER_OUT[key] = _peer(W, H, PATTERNS[pattern])
    return _PEER_OUT[key]


def _rounds(impl: str, layer: Layer, run: Callable[[], object]) -> int:
    """Timed rounds, the same rule for the peer and every ssgr backend: one untimed warm-up call
    (a first call's import and allocation costs stay out of the median), timed here, then rounds
    spanning about 15 s (5 to 30, :func:`shapes.budget_rounds`). The slow reference at the
    speed-goal shapes gets one round and no warm-up."""
    if impl == "reference" and layer.numel >= SLOW_REFERENCE_NUMEL:
        return 1
    if SMOKE:
        return rounds(5)
    t0 = time.perf_counter()
    run()
    return budget_rounds(time.perf_counter() - t0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("layer", SPARSEGPT_LAYERS, ids=lambda lay: lay.id)
def test_sparsegpt(benchmark, sync, layer: Layer, pattern: str, impl: str) -> None:
    if impl == PEER:
        pytest.importorskip("llmcompressor")
    W, H = _problem(layer.rows, layer.cols)
    kw = PATTERNS[pattern]
    benchmark.group = f"sparsegpt {layer.label} {pattern} {DEVICE}"
    benchmark.extra_info.update(op="sparsegpt", impl=impl, peer=impl == PEER, model=layer.model,
                                shape=list(layer.shape), pattern=pattern)

    def run() -> torch.Tensor:
        if impl == PEER:
            out = _peer(W, H, kw)
        else:
            out = sparsegpt_prune(W, H, backend=impl, **kw).weight
        sync()
        return out

    out = benchmark.pedantic(run, rounds=_rounds(impl, layer, run), iterations=1, warmup_rounds=0)
    if impl == PEER:
        _PEER_OUT.clear()
        _PEER_OUT[(layer.rows, layer.cols, pattern)] = out
        return
    try:
        ref = _peer_result(layer, pattern, W, H)
    except ImportError:
        return  # no llm-compressor here: timed, not checked
    mism = int(((out != 0) != (ref != 0)).sum())
    benchmark.extra_info["mask_mismatch"] = mism
    benchmark.extra_info["numel"] = out.numel()
    # fp32 rounding flips only near-ties: llm-compressor itself differs this much from fp64
    assert mism <= 1e-4 * out.numel(), f"{mism} mask mismatches vs llm-compressor"


@pytest.mark.parametrize("impl", [b for b in IMPLS if b not in (PEER, "reference")])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("layer", PAIRED_LAYERS, ids=lambda lay: lay.id)
def test_sparsegpt_paired(benchmark, sync, layer: Layer, pattern: str, impl: str) -> None:
    """``impl`` timed by pytest-benchmark; before each of its rounds (warm-up included) one peer
    round, timed with the same clock. Stores the peer's times and the per-round ratios."""
    pytest.importorskip("llmcompressor")
    W, H = _problem(layer.rows, layer.cols)
    kw = PATTERNS[pattern]
    benchmark.group = f"sparsegpt-paired {layer.label} {pattern} {DEVICE}"
    peer_s: list[float] = []
    peer_out: list[torch.Tensor] = []

    def peer_round() -> None:
        t0 = time.perf_counter()
        out = _peer(W, H, kw)
        sync()
        peer_s.append(time.perf_counter() - t0)
        peer_out[:] = [out]

    def run() -> torch.Tensor:
        out = sparsegpt_prune(W, H, backend=impl, **kw).weight
        sync()
        return out

    n, warm = rounds(5), warmup()
    out = benchmark.pedantic(run, setup=peer_round, rounds=n, iterations=1, warmup_rounds=warm)
    mism = int(((out != 0) != (peer_out[0] != 0)).sum())
    benchmark.extra_info.update(op="sparsegpt-paired", impl=impl, peer=False, model=layer.model,
                                shape=list(layer.shape), pattern=pattern, mask_mismatch=mism,
                                numel=out.numel())
    assert mism <= 1e-4 * out.numel(), f"{mism} mask mismatches vs llm-compressor"
    if benchmark.stats is None:
        return  # --benchmark-disable: run once, nothing timed
    own = list(benchmark.stats.stats.data)
    peer_timed = peer_s[warm:]  # the peer rounds that preceded the timed rounds
    ratios = [p / t for p, t in zip(peer_timed, own, strict=True)]
    benchmark.extra_info.update(peer_seconds=peer_timed, ratios=ratios,
                                ratio_median=statistics.median(ratios))
