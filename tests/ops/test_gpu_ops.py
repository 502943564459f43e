"""The GPU backends (triton, cuda) on CUDA tensors against the reference in the same dtype and a
float64 oracle: Hessian, SparseGPT (and llm-compressor; a 2:4 result fed to
torch.sparse.to_sparse_semi_structured), masks. Skipped (never faked) without a CUDA device."""

from __future__ import annotations

import pytest
import torch
from _util import assert_same_prune, peer_sparsify, random_hessian

from ssgr.ops import hessian_accumulate, nm_mask, sparsegpt_prune, support_matrix, topk_mask
from ssgr.ops import reference as ref

pytestmark = pytest.mark.gpu

HAS_CUDA = torch.cuda.is_available()
GPU_BACKENDS = ["triton", "cuda"]


def _need(op: str, backend: str) -> None:
    if not HAS_CUDA:
        pytest.skip("needs a CUDA device")
    reason = support_matrix()[op][backend]
    if reason is not None:
        pytest.skip(f"{backend} unavailable: {reason}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,d", [(4133, 333), (32768, 256), (100, 1000)])
def test_hessian_error_within_2x_reference(seed, backend, dtype, t, d):
    _need("hessian", backend)
    X = torch.randn(t, d, device="cuda").to(dtype)
    H = torch.zeros(d, d, device="cuda")
    hessian_accumulate(H, X, backend=backend)
    R = torch.zeros(d, d, device="cuda")
    hessian_accumulate(R, X, backend="reference")
    oracle = X.double().T @ X.double()
    err_ref = (R.double() - oracle).abs().max().item()
    err = (H.double() - oracle).abs().max().item()
    assert err <= 2 * err_ref + 1e-6 * oracle.abs().max().item()
    assert torch.equal(H, H.T)


CASES = [
    (256, 512, 128, dict(sparsity=0.5), (0.5, 0, 0)),
    (300, 640, 128, dict(n=2, m=4), (0.0, 2, 4)),
    (129, 512, 64, dict(n=4, m=8), (0.0, 4, 8)),
]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("rows,cols,bs,kw,peer", CASES)
def test_sparsegpt_equals_reference_and_oracle(seed, backend, rows, cols, bs, kw, peer):
    _need("sparsegpt", backend)
    W = torch.randn(rows, cols, device="cuda")
    H = random_hessian(cols, device="cuda")
    r = sparsegpt_prune(W, H, blocksize=bs, backend="reference", **kw)
    out = sparsegpt_prune(W, H, blocksize=bs, backend=backend, **kw)
    oracle = sparsegpt_prune(W.double(), H.double(), blocksize=bs, backend="reference", **kw)
    assert_same_prune(out, r, rtol=1e-3, atol=1e-3)
    rows = ~((out.mask != oracle.mask) | (r.mask != oracle.mask)).any(1)
    err_ref = (r.weight.double() - oracle.weight)[rows].abs().max().item()
    err = (out.weight.double() - oracle.weight)[rows].abs().max().item()
    assert err <= 2 * err_ref + 1e-6


@pytest.mark.peer
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_sparsegpt_matches_llmcompressor(seed, backend):
    _need("sparsegpt", backend)
    pytest.importorskip("llmcompressor")
    W = torch.randn(512, 1024, device="cuda")
    H = random_hessian(1024, device="cuda")
    for kw, peer in ((dict(n=2, m=4), (0.0, 2, 4)), (dict(sparsity=0.5), (0.5, 0, 0))):
        Qp, _ = peer_sparsify(W.cpu(), H.cpu(), *peer, blocksize=128)
        out = sparsegpt_prune(W, H, backend=backend, **kw)
        mism = int(((out.weight.cpu() != 0) != (Qp != 0)).sum())
        assert mism <= 1e-4 * W.numel()  # fp32 rounding flips only near-ties
        torch.testing.assert_close(out.weight.cpu(), Qp, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (5, 16)])
def test_nm_mask_equals_reference(seed, backend, dtype, n, m):
    _need("nm_mask", backend)
    s = torch.randn(513, 64 * m, device="cuda").to(dtype)
    assert torch.equal(nm_mask(s, n, m, backend=backend), ref.nm_mask(s, n, m))
    ties = torch.randint(0, 3, (64, 32 * m), device="cuda").to(dtype)
    assert torch.equal(nm_mask(ties, n, m, backend=backend), ref.nm_mask(ties, n, m))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("per", ["row", "layer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_topk_mask_equals_reference(seed, backend, per, dtype):
    _need("topk_mask", backend)
    for s in (torch.randn(300, 5120, device="cuda").to(dtype),
              torch.randint(0, 5, (64, 1000), device="cuda").to(dtype)):
        k = int((s.shape[1] if per == "row" else s.numel()) * 0.5)
        assert torch.equal(topk_mask(s, 0.5, per, backend=backend), ref.topk_mask(s, k, per))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_24_result_goes_to_semi_structured(seed, backend, dtype):
    """A 2:4 SparseGPT result needs no packing of ours: torch's semi-structured format takes the
    dense pruned matrix as it is."""
    _need("sparsegpt", backend)
    W = torch.randn(128, 256, device="cuda").to(dtype)
    out = sparsegpt_prune(W, random_hessian(256, device="cuda"), n=2, m=4, backend=backend)
    dense = out.weight * out.mask
    assert torch.equal(dense, out.weight)
    sparse = torch.sparse.to_sparse_semi_structured(dense)
    x = torch.randn(256, 64, device="cuda").to(dtype)
    torch.testing.assert_close(sparse @ x, dense @ x, rtol=1e-2, atol=1e-2)
