"""SparseGPT (blocked OBS) on real layer shapes: ssgr backends vs llm-compressor's
``sparsify_weight`` (the peer) in the same run. Each group is one shape and pattern; the ratio is
read from the group (``benchmarks/report.py``). Results are checked to agree with the peer."""

from __future__ import annotations

import os

import pytest
import torch

from ssgr.ops import sparsegpt_prune, support_matrix

# (rows, cols): Llama-7B-like q_proj 4096x4096, Qwen-1.5B-like down_proj 2048x5632 (CPU set)
SHAPES = [(4096, 4096), (2048, 5632)]
PATTERNS = {"50%": dict(sparsity=0.5), "2:4": dict(n=2, m=4)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDS = int(os.environ.get("SSGR_BENCH_ROUNDS", "3"))


def _problem(rows: int, cols: int):
    g = torch.Generator().manual_seed(rows * 7 + cols)
    X = torch.randn(2 * cols, cols, generator=g)
    H = (X.T @ X / X.shape[0]).to(DEVICE)
    W = torch.randn(rows, cols, generator=g).to(DEVICE)
    return W, H


def _peer(W, H, kw):
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device=W.device)
    lin.weight.requires_grad_(False).copy_(W)
    sparsity = kw.get("sparsity", 0.0)
    prune_n = kw["m"] - kw["n"] if "m" in kw else 0
    _, Q = sparsify_weight(lin, {lin: H.clone()}, sparsity, prune_n, kw.get("m", 0), 128, 0.01, False)
    return Q


IMPLS = ["llm-compressor"] + [
    b for b in ("cpu", "triton", "cuda") if support_matrix()["sparsegpt"][b] is None
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sparsegpt(benchmark, sync, shape, pattern, impl):
    if impl in ("triton", "cuda") and DEVICE != "cuda":
        pytest.skip(f"{impl} needs a GPU")
    if impl == "cpu" and DEVICE != "cpu":
        pytest.skip("cpu backend on a GPU machine: measured in the CPU run")
    W, H = _problem(*shape)
    kw = PATTERNS[pattern]
    benchmark.group = f"sparsegpt {shape[0]}x{shape[1]} {pattern} {DEVICE}"
    benchmark.extra_info.update(op="sparsegpt", impl=impl, peer=impl == "llm-compressor")

    def run():
        if impl == "llm-compressor":
            out = _peer(W, H, kw)
        else:
            out = sparsegpt_prune(W, H, backend=impl, **kw).weight
        sync()
        return out

    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if impl != "llm-compressor":
        ref = _peer(W, H, kw)
        mism = int(((out != 0) != (ref != 0)).sum())
        benchmark.extra_info["mask_mismatch"] = mism
        benchmark.extra_info["numel"] = out.numel()
        # fp32 rounding flips only near-ties: llm-compressor itself differs this much from fp64
        assert mism <= 1e-4 * out.numel(), f"{mism} mask mismatches vs llm-compressor"
