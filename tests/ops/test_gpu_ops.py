"""The GPU backends (triton, cuda) on CUDA tensors against the reference in the same dtype and a
float64 oracle: Hessian, SparseGPT (and llm-compressor; a 2:4 result fed to
torch.sparse.to_sparse_semi_structured), masks; launches on the tensors' device (two GPUs), a
global TF32 setting that changes nothing, the CUDA bindings' argument checks. Skipped (never
faked) without a CUDA device (two for the device tests)."""

from __future__ import annotations

import pytest
import torch
from _util import assert_same_prune, peer_sparsify, random_hessian

from ssgr.errors import InputError
from ssgr.ops import (
    _precision,
    hessian_accumulate,
    nm_mask,
    sparsegpt_prune,
    support_matrix,
    topk_mask,
)
from ssgr.ops import reference as ref
from ssgr.ops._precision import fp32_settings

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


# ----------------------------------------------------------------- launch device and precision


def _need_two(op: str, backend: str) -> None:
    _need(op, backend)
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_every_op_launches_on_its_tensors_device(seed, backend):
    """Tensors on cuda:1 while cuda:0 is current: each kernel runs on cuda:1 (a launch on the
    current device would read cuda:1's pointers from cuda:0, an illegal access or garbage), the
    result equals the reference's on cuda:1, and the current device is left alone."""
    for op in ("hessian", "sparsegpt", "nm_mask", "topk_mask"):
        _need_two(op, backend)
    dev = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    X = torch.randn(512, 96, device=dev).bfloat16()
    H = torch.zeros(96, 96, device=dev)
    hessian_accumulate(H, X, backend=backend)
    R = torch.zeros(96, 96, device=dev)
    hessian_accumulate(R, X, backend="reference")
    torch.testing.assert_close(H, R, rtol=1e-4, atol=1e-2)
    s = torch.randn(64, 128, device=dev)
    assert torch.equal(nm_mask(s, 2, 4, backend=backend), ref.nm_mask(s, 2, 4))
    for per in ("row", "layer"):
        k = 64 if per == "row" else 64 * 64
        assert torch.equal(topk_mask(s, 0.5, per, backend=backend), ref.topk_mask(s, k, per))
    W = torch.randn(64, 256, device=dev)
    Hs = random_hessian(256, device=dev)
    out = sparsegpt_prune(W, Hs, n=2, m=4, blocksize=128, backend=backend)
    r = sparsegpt_prune(W, Hs, n=2, m=4, blocksize=128, backend="reference")
    assert out.weight.device == dev
    assert_same_prune(out, r, rtol=1e-3, atol=1e-3)
    torch.cuda.synchronize(dev)
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tensors_on_two_devices_are_refused(backend):
    _need_two("hessian", backend)
    H = torch.zeros(64, 64, device="cuda:0")
    X = torch.randn(128, 64, device="cuda:1")
    with pytest.raises(InputError, match="one device"):
        hessian_accumulate(H, X, backend=backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_global_tf32_does_not_change_results(seed, backend):
    """A training script's ``allow_tf32 = True`` (and "high" matmul precision) must not reach
    ssgr's fp32 GEMMs (trailing OBS update, per-block products): bitwise equal results, and the
    user's setting is still in place afterwards."""
    _need("sparsegpt", backend)
    W = torch.randn(256, 640, device="cuda")
    H = random_hessian(640, device="cuda")
    X = torch.randn(1024, 640, device="cuda")
    saved = fp32_settings()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        plain = sparsegpt_prune(W, H, sparsity=0.5, blocksize=128, backend=backend)
        Hp = torch.zeros(640, 640, device="cuda")
        hessian_accumulate(Hp, X, backend=backend)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        before = fp32_settings()
        tf32 = sparsegpt_prune(W, H, sparsity=0.5, blocksize=128, backend=backend)
        Ht = torch.zeros(640, 640, device="cuda")
        hessian_accumulate(Ht, X, backend=backend)
        assert fp32_settings() == before
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        _precision._set(saved)
    assert torch.equal(plain.weight, tf32.weight) and torch.equal(plain.mask, tf32.mask)
    assert torch.equal(Hp, Ht)


def test_cuda_bindings_name_the_bad_argument():
    """Every binding of ssgr._cuda checks device, dtype, shape and layout of each tensor and
    names the argument."""
    _need("sparsegpt", "cuda")
    from ssgr.ops import _gpu

    lib = _gpu.cuda_lib()
    H = torch.zeros(64, 64, device="cuda")
    with pytest.raises(RuntimeError, match="hessian: X must be"):
        lib.hessian(H, torch.zeros(8, 32, device="cuda"), 1)
    with pytest.raises(RuntimeError, match="hessian: H must be"):
        lib.hessian(H.double(), torch.zeros(8, 64, device="cuda"), 1)
    rows, count = 32, 16
    W1 = torch.randn(rows, count, device="cuda")
    U = torch.eye(count, device="cuda")
    keep = torch.empty(rows, count, dtype=torch.uint8, device="cuda")
    err = torch.empty(rows, count, device="cuda")
    losses = torch.zeros(rows, device="cuda")
    prune = torch.zeros(rows, count, dtype=torch.uint8, device="cuda")
    lib.obs_block(W1, U, prune, 0, 0, keep, err, losses, 32)  # the valid call runs
    bad = {
        "U": (W1, U.double(), prune, keep, err, losses),
        "keep": (W1, U, prune, keep.float(), err, losses),
        "err": (W1, U, prune, keep, err[:, :8], losses),
        "losses": (W1, U, prune, keep, err, losses[:4]),
        "prune": (W1, U, prune.t(), keep, err, losses),
    }
    for name, (w, u, p, k, e, lo) in bad.items():
        with pytest.raises(RuntimeError, match=f"obs_block: {name} must be"):
            lib.obs_block(w, u, p, 0, 0, k, e, lo, 32)
    with pytest.raises(RuntimeError, match="nm_mask: scores must be"):
        lib.nm_mask(torch.zeros(4, 8, dtype=torch.int32, device="cuda"), 2, 4)
    with pytest.raises(RuntimeError, match="topk_mask: scores must be"):
        lib.topk_mask(torch.zeros(8, device="cuda"), 2)
