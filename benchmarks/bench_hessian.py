"""Hessian accumulation ``H[d, d] += X^T X`` (fp32 accumulation) at real models' input widths.

One group per width: every ssgr backend of the ``hessian`` op available on this device
(reference, cpu; triton, cuda on a GPU) against the peers: the fp32-upcast torch baseline
``H.addmm_(X.T.float(), X.float())`` ("torch-addmm"); on a GPU with bf16/fp16 X also cuBLAS's
half-precision GEMM with an fp32 result, ``H.add_(torch.mm(X.T, X, out_dtype=torch.float32))``
("torch-mm-fp32out": ``aten::mm.dtype`` has a CUDA kernel only; the honest GPU baseline, as it
reads X once in bf16 and runs on tensor cores); and llm-compressor 0.14's ``accumulate_hessian``
("llm-compressor", which also rescales H by the sample count: same work plus an O(d^2) scale).
CPU: ``X[2048, d]`` fp32 at SmolLM2-135M and Qwen2.5-1.5B widths (576;
1536, SmolLM2's intermediate and 1.5B's hidden size; 8960, three rounds); GPU: ``X[32768, d]``
bf16 (one 32k-token trace) at Qwen2.5-7B and R1-Distill-Qwen-14B widths. ``flops`` in
extra_info counts the symmetric half, ``d * d * tokens`` (as ``gpu.py``). Each ssgr backend's H
is checked against torch-addmm's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from shapes import (
    CPU_BIG_FLOPS,
    DEVICE,
    HESSIAN_DTYPE,
    HESSIAN_TOKENS,
    HESSIAN_WIDTHS,
    Width,
    backends,
    dtype_name,
    rounds,
    warmup,
)

from ssgr.ops import hessian_accumulate

#: cuBLAS bf16/fp16 GEMM with an fp32 output (``aten::mm.dtype``: CUDA only).
MM_FP32OUT = "torch-mm-fp32out"
PEERS = ["torch-addmm", "llm-compressor"] + (
    [MM_FP32OUT] if DEVICE == "cuda" and HESSIAN_DTYPE in (torch.bfloat16, torch.float16) else []
)
IMPLS = backends("hessian") + PEERS


def _x(d: int) -> torch.Tensor:
    g = torch.Generator(device=DEVICE).manual_seed(d)
    return torch.randn(HESSIAN_TOKENS, d, device=DEVICE, generator=g).to(HESSIAN_DTYPE)


def _addmm(H: torch.Tensor, X: torch.Tensor) -> None:
    H.addmm_(X.T.float(), X.float())


def _mm_fp32out(H: torch.Tensor, X: torch.Tensor) -> None:
    H.add_(torch.mm(X.T, X, out_dtype=torch.float32))


def _llmcompressor() -> Callable:
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import accumulate_hessian

    return accumulate_hessian


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("width", HESSIAN_WIDTHS, ids=lambda w: w.id)
def test_hessian(benchmark, sync, width: Width, impl: str) -> None:
    d = width.d
    X = _x(d)
    H = torch.zeros(d, d, device=DEVICE)
    benchmark.group = (
        f"hessian {width.label} X[{HESSIAN_TOKENS}] {dtype_name(HESSIAN_DTYPE)} {DEVICE}"
    )
    benchmark.extra_info.update(
        op="hessian", impl=impl, model=width.model, d=d, tokens=HESSIAN_TOKENS,
        flops=d * d * HESSIAN_TOKENS, peer=impl == "llm-compressor",
    )
    if impl == "llm-compressor":
        pytest.importorskip("llmcompressor")
        accumulate = _llmcompressor()
        # accumulate_hessian only dispatches on the module's class: a meta Linear costs nothing
        lin = torch.nn.Linear(d, 1, bias=False, device="meta")

        def run() -> None:
            accumulate(X, lin, H, 1)
            sync()
    elif impl == "torch-addmm":

        def run() -> None:
            _addmm(H, X)
            sync()
    elif impl == MM_FP32OUT:

        def run() -> None:
            _mm_fp32out(H, X)
            sync()
    else:

        def run() -> None:
            hessian_accumulate(H, X, backend=impl)
            sync()

    n = rounds(5, big=d * d * HESSIAN_TOKENS >= CPU_BIG_FLOPS)
    benchmark.pedantic(run, rounds=n, iterations=1, warmup_rounds=warmup())
    if impl in PEERS:
        return
    got = torch.zeros(d, d, device=DEVICE)
    hessian_accumulate(got, X, backend=impl)
    want = torch.zeros(d, d, device=DEVICE)
    _addmm(want, X)
    rel = ((got - want).abs().max() / want.abs().max()).item()
    benchmark.extra_info["max_rel_diff_vs_addmm"] = rel
    assert rel < 1e-4, f"{impl} differs from torch-addmm by {rel:.2e} (relative to max |H|)"
