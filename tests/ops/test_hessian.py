"""Hessian accumulation: streaming == one shot, fp64 oracle, dtypes, token counting, Wanda norms,
bad input."""

from __future__ import annotations

import pytest
import torch

from ssgr.errors import InputError
from ssgr.ops import HessianAccumulator, hessian_accumulate, support_matrix

#: Slack of the oracle comparisons, relative to max|H|: a few fp32 ulps. fp32 accumulation of
#: the products needs no more (2x the reference's error is the main bound); TF32 products (10-bit
#: mantissa, relative error ~5e-4) exceed it, see test_fp32_slack_rejects_a_tf32_product.
FP32_SLACK = 1e-6

BACKENDS = ["reference"] + [
    b for b in ("cpu", "triton", "cuda") if support_matrix()["hessian"][b] is None
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hessian_vs_float64_oracle(seed, backend, dtype):
    X = torch.randn(333, 67).to(dtype)
    H = torch.zeros(67, 67)
    hessian_accumulate(H, X, backend=backend)
    oracle = X.double().T @ X.double()
    ref = torch.zeros(67, 67)
    hessian_accumulate(ref, X, backend="reference")
    err_ref = (ref.double() - oracle).abs().max().item()
    err = (H.double() - oracle).abs().max().item()
    assert err <= 2 * err_ref + FP32_SLACK * oracle.abs().max().item()
    torch.testing.assert_close(H, H.T)  # symmetric


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """x rounded to TF32 (10 explicit mantissa bits, round to nearest even), as tensor cores
    read fp32 inputs when TF32 is allowed."""
    bits = x.float().contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    return ((bits + 0xFFF + lsb) & ~0x1FFF).view(torch.float32)


def test_fp32_slack_rejects_a_tf32_product(seed):
    """The slack of the oracle test is fp32 accumulation's, not TF32's: an fp32 X multiplied as
    TF32 (what an inherited ``allow_tf32`` would give) fails the bound."""
    X = torch.randn(333, 67)
    oracle = X.double().T @ X.double()
    ref = torch.zeros(67, 67)
    hessian_accumulate(ref, X, backend="reference")
    Xt = _tf32(X).double()
    tf32 = (Xt.T @ Xt).float()  # TF32 products, accumulated exactly
    err_ref = (ref.double() - oracle).abs().max().item()
    err = (tf32.double() - oracle).abs().max().item()
    assert err > 2 * err_ref + FP32_SLACK * oracle.abs().max().item()


def test_streaming_equals_one_shot_and_counts_tokens(seed):
    X = torch.randn(3, 101, 24)
    acc = HessianAccumulator(24)
    for piece in (X[0], X[1, :7], X[1, 7:], X[2:]):  # 2-D and 3-D chunks of any length
        acc.add(piece)
    assert acc.tokens == 303
    flat = X.reshape(-1, 24).double()
    torch.testing.assert_close(acc.hessian().double(), flat.T @ flat / 303, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.col_sq_norms().double(), (flat**2).mean(0), rtol=1e-5, atol=1e-5)
    norms_only = HessianAccumulator(24, hessian=False)
    norms_only.add(X)
    assert norms_only.H is None and norms_only.tokens == 303
    torch.testing.assert_close(norms_only.col_sq_norms(), acc.col_sq_norms(), rtol=1e-5, atol=1e-6)


def test_long_trace_is_chunked(seed):
    """A trace longer than the upcast chunk gives the same H as one matmul."""
    from ssgr.ops import reference

    X = torch.randn(1000, 16).bfloat16()
    H = torch.zeros(16, 16)
    reference.hessian_accumulate(H, X, chunk=64)
    Xf = X.float()
    torch.testing.assert_close(H, Xf.T @ Xf, rtol=1e-5, atol=1e-4)


def test_empty_input_is_a_no_op():
    H = torch.zeros(4, 4)
    hessian_accumulate(H, torch.zeros(0, 4))
    assert not H.any()


@pytest.mark.parametrize(
    "H,X,match",
    [
        (torch.zeros(4, 4), torch.randn(3, 5), "last dimension must be d=4"),
        (torch.zeros(4, 5), torch.randn(3, 5), "square"),
        (torch.zeros(4, 4, dtype=torch.bfloat16), torch.randn(3, 4), "accumulates in float32"),
        (torch.zeros(4, 4), torch.ones(3, 4, dtype=torch.int64), "X has dtype"),
        (torch.zeros(4, 4), torch.randn(3, 4).double(), "float64 H"),
        (torch.zeros(4, 4), torch.randn(3, 4, device="meta"), "one device"),
        (torch.zeros(4, 8)[:, :4], torch.randn(3, 4), "contiguous"),
    ],
)
def test_bad_input(H, X, match):
    with pytest.raises(InputError, match=match):
        hessian_accumulate(H, X)


def test_accumulator_errors_name_the_module():
    acc = HessianAccumulator(8, name="model.layers.3.mlp.down_proj")
    with pytest.raises(InputError, match="down_proj: no tokens"):
        acc.hessian()
    with pytest.raises(ValueError, match="down_proj: X has shape"):
        acc.add(torch.randn(2, 7))
    bad = torch.randn(5, 8)
    bad[2, 3] = float("inf")
    acc.add(bad)
    with pytest.raises(ValueError, match="down_proj Hessian has .* NaN/Inf"):
        acc.hessian()
    with pytest.raises(ValueError, match="positive int"):
        HessianAccumulator(0)


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_blocked_syrk_equals_reference(seed, block, dtype):
    """The cpu backend's upper-block-triangle update (partial last block: d=67) over several
    calls stays symmetric and equals the full product to fp32 rounding; the float64 H works."""
    from ssgr.ops.hessian.cpu import hessian as hessian_cpu

    chunks = [torch.randn(t, 67).to(dtype) for t in (1, 50, 333)]
    H, R = torch.zeros(67, 67), torch.zeros(67, 67)
    H64 = torch.zeros(67, 67, dtype=torch.float64)
    for X in chunks:
        hessian_cpu(H, X, block=block, chunk=40)  # chunking across calls too
        hessian_accumulate(R, X, backend="reference")
        hessian_cpu(H64, X.double(), block=block)
    flat = torch.cat(chunks).double()
    oracle = flat.T @ flat
    assert torch.equal(torch.tril(H, -block), torch.triu(H, block).T)
    torch.testing.assert_close(H, H.T, rtol=1e-6, atol=1e-5)
    err, err_ref = (H.double() - oracle).abs().max(), (R.double() - oracle).abs().max()
    assert err <= 2 * err_ref + 1e-6 * oracle.abs().max()
    torch.testing.assert_close(H64, oracle, rtol=1e-12, atol=1e-10)


def test_accumulator_gathers_short_inputs(seed, monkeypatch):
    """Short inputs are buffered (flushed when full, on a dtype change and when read), long
    ones go straight through; the result equals one product over every token."""
    from ssgr.ops import hessian as hmod

    monkeypatch.setattr(hmod, "GATHER_TOKENS", 64)
    calls: list[int] = []
    real = hmod.hessian_accumulate
    monkeypatch.setattr(hmod, "hessian_accumulate",
                        lambda H, X, backend=None: (calls.append(X.shape[0]), real(H, X))[1])
    pieces = [torch.randn(t, 40) for t in (30, 30, 30)] + [torch.randn(100, 40)]
    pieces += [torch.randn(1, 5, 40).bfloat16(), torch.randn(7, 40)]
    acc = hmod.HessianAccumulator(40)
    for p in pieces:
        acc.add(p)
    assert calls == [60, 30, 100, 5]  # full buffer; pending before the long input; dtype change
    flat = torch.cat([p.reshape(-1, 40).float() for p in pieces]).double()
    torch.testing.assert_close(acc.hessian().double(), flat.T @ flat / 202, rtol=1e-5, atol=1e-5)
    assert calls[-1] == 7 and acc.tokens == 202
    torch.testing.assert_close(acc.col_sq_norms().double(), (flat**2).mean(0), rtol=1e-5, atol=1e-5)
