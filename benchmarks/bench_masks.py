"""N:M (2:4) and per-row top-k masks at Qwen-14B weight shapes: ssgr's GPU backends vs the
reference (torch sort / scatter) in the same group. GPU only (skipped on CPU machines);
``benchmarks/gpu.py`` reports the N:M kernel's bandwidth against a measured device copy."""

from __future__ import annotations

import pytest
import torch

from ssgr.ops import nm_mask, support_matrix, topk_mask

SHAPES = [(5120, 5120), (13824, 5120), (5120, 13824)]
NM_IMPLS = ["reference"] + [b for b in ("triton", "cuda") if support_matrix()["nm_mask"][b] is None]
TOPK_IMPLS = ["reference"] + [
    b for b in ("triton", "cuda") if support_matrix()["topk_mask"][b] is None
]


def _scores(shape):
    g = torch.Generator(device="cuda").manual_seed(shape[0] + shape[1])
    return torch.randn(*shape, device="cuda", generator=g)


@pytest.mark.parametrize("impl", NM_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_nm_mask(benchmark, sync, shape, impl):
    if not torch.cuda.is_available():
        pytest.skip("GPU benchmark")
    s = _scores(shape)
    benchmark.group = f"nm_mask 2:4 {shape[0]}x{shape[1]} fp32"
    benchmark.extra_info.update(op="nm_mask", impl=impl, bytes=s.numel() * 5)

    def run():
        out = nm_mask(s, 2, 4, backend=impl)
        sync()
        return out

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", TOPK_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_topk_mask(benchmark, sync, shape, impl):
    if not torch.cuda.is_available():
        pytest.skip("GPU benchmark")
    s = _scores(shape)
    benchmark.group = f"topk_mask 50% per row {shape[0]}x{shape[1]} fp32"
    benchmark.extra_info.update(op="topk_mask", impl=impl)

    def run():
        out = topk_mask(s, 0.5, "row", backend=impl)
        sync()
        return out

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
