"""Hessian accumulation at Qwen-14B input widths (X[32768, d] bf16, one 32k-token trace): ssgr's
GPU backends vs the torch baseline ``H.addmm_(X.T.float(), X.float())`` in the same group.
GPU only (skipped on CPU machines); ``benchmarks/gpu.py`` reports TFLOP/s against the measured
bf16 GEMM peak."""

from __future__ import annotations

import pytest
import torch

from ssgr.ops import hessian_accumulate, support_matrix

TOKENS = 32768
WIDTHS = [5120, 13824]
IMPLS = ["torch-addmm"] + [b for b in ("triton", "cuda") if support_matrix()["hessian"][b] is None]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("d", WIDTHS)
def test_hessian(benchmark, sync, d, impl):
    if not torch.cuda.is_available():
        pytest.skip("GPU benchmark")
    g = torch.Generator(device="cuda").manual_seed(d)
    X = torch.randn(TOKENS, d, device="cuda", generator=g).bfloat16()
    H = torch.zeros(d, d, device="cuda")
    benchmark.group = f"hessian X[{TOKENS}, {d}] bf16"
    benchmark.extra_info.update(op="hessian", impl=impl, flops=d * d * TOKENS)

    def run():
        if impl == "torch-addmm":
            H.addmm_(X.T.float(), X.float())
        else:
            hessian_accumulate(H, X, backend=impl)
        sync()

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
