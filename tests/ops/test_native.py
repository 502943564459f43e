"""ssgr.ops._native, the native CPU boundary: its typed wrappers refuse tensors the C++ kernels
cannot take (device, dtype, shape, strides) before any pointer is passed, and ``potrf_``, the
in-place Cholesky of torch's bundled LAPACK (the SparseGPT cpu backend's factorisation), against
torch.linalg.cholesky and a float64 oracle."""

from __future__ import annotations

import pytest
import torch
from _util import random_hessian

from ssgr.ops import _native, support_matrix


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 7, 37, 300])
def test_potrf_equals_torch_cholesky(seed, c, dtype):
    H = random_hessian(c, dtype=dtype)
    H.diagonal().add_(0.01 * H.diagonal().mean())  # damped as sparsegpt_prune damps it
    A = H.clone()
    L = _native.potrf_(A)
    assert L.dtype == dtype
    if _native.potrf_available(dtype):
        assert L.data_ptr() == A.data_ptr(), "factored in place"
    lower = L.tril()
    # vs a float64 oracle: no worse than 2x torch.linalg.cholesky's error in the same dtype plus
    # a few ulps (for float64 torch's call is the oracle: another blocking order differs by ulps)
    oracle = torch.linalg.cholesky(H.double())
    err = (lower.double() - oracle).abs().max().item()
    err_torch = (torch.linalg.cholesky(H).double() - oracle).abs().max().item()
    ulp = torch.finfo(dtype).eps * oracle.abs().max().item()
    ulps = 4 if dtype == torch.float32 else 64
    assert err <= 2 * err_torch + ulps * ulp
    if c > 1 and _native.potrf_available(dtype):  # the strict upper triangle is left alone
        assert torch.equal(L.triu(1), H.triu(1))


def test_potrf_backward_error_on_ill_conditioned_input(seed):
    """Undamped, H is ill-conditioned (cond ~1e5-1e8), so L itself is ill-determined in fp32;
    ``L L^T`` must still reproduce H to fp32 accuracy."""
    H = random_hessian(300)
    lower = _native.potrf_(H.clone()).tril().double()
    recon = (lower @ lower.T - H.double()).abs().max().item()
    assert recon <= 1e-5 * H.diagonal().max().item()


def test_potrf_not_positive_definite_raises():
    A = torch.eye(5)
    A[3, 3] = -1.0
    with pytest.raises(torch.linalg.LinAlgError, match="order 4"):
        _native.potrf_(A.clone())


@pytest.mark.parametrize(
    "A",
    [torch.eye(4, dtype=torch.float16), torch.eye(6)[:, ::2].contiguous(), torch.eye(4).T],
    ids=["float16", "not-square", "not-contiguous"],
)
def test_potrf_rejects_other_layouts(A):
    with pytest.raises(ValueError, match="potrf_"):
        _native.potrf_(A)


def test_potrf_available_rejects_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        _native.potrf_available(torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_potrf_falls_back_to_torch(seed, monkeypatch, dtype):
    monkeypatch.setattr(_native, "_spotrf", lambda: None)
    monkeypatch.setattr(_native, "_dpotrf", lambda: None)
    H = random_hessian(20, dtype=dtype)
    torch.testing.assert_close(_native.potrf_(H.clone()).tril(), torch.linalg.cholesky(H))


needs_c = pytest.mark.skipif(_native.probe() is not None, reason="ssgr._C is not built")


@needs_c
def test_every_binding_has_named_arguments():
    """Every ssgr._C function takes its arguments by name (no positional-only raw pointers)."""
    lib = _native.lib()
    first = {"obs_block_f32": "w", "block_prune_mask_f32": "w", "flip2d_f32": "src",
             "flip2d_f32_f64": "src", "narrow_f64_f32_inplace": "buf", "nm_mask": "scores",
             "topk_mask": "scores"}
    for name, arg in first.items():
        signature = getattr(lib, name).__doc__.splitlines()[0]
        assert signature.startswith(f"{name}({arg}: ") and "arg0" not in signature, signature
    with pytest.raises(TypeError):
        lib.flip2d_f32(source=0, n=0, dst=0)  # a wrong name is refused


def _obs_args(rows=5, count=8):
    w = torch.randn(rows, count)
    return dict(w=w, u=torch.eye(count), prune=torch.zeros(rows, count, dtype=torch.uint8),
                n_prune=0, m=0, keep=torch.empty(rows, count, dtype=torch.bool),
                losses=torch.zeros(rows), q_out=w, dflip=None)


@needs_c
@pytest.mark.parametrize(
    "change,match",
    [
        (dict(w=torch.randn(5, 8).double()), "w must be torch.float32"),
        (dict(u=torch.eye(9)), r"u must have shape \(8, 8\)"),
        (dict(u=torch.eye(16)[::2, ::2]), "u must have unit stride"),
        (dict(keep=torch.empty(5, 8, dtype=torch.int32)), "keep must be"),
        (dict(losses=torch.zeros(10)[::2]), "losses must have unit stride"),
        (dict(prune=None), "needs a prune mask"),
        (dict(prune=torch.zeros(8, 5, dtype=torch.uint8).T), "prune must"),
        (dict(q_out=torch.randn(5, 7)), "q_out must have shape"),
        (dict(dflip=torch.zeros(5, 16)[:, :8]), "dflip must be contiguous"),
        (dict(n_prune=2, m=2, prune=None), "0 < n_prune < m"),
        (dict(w=torch.randn(5, 8, device="meta")), "CPU tensor"),
    ],
)
def test_obs_block_refuses_bad_tensors(change, match):
    args = {**_obs_args(), **change}
    if "w" in change and "q_out" not in change:
        args["q_out"] = torch.randn(5, 8)
    with pytest.raises(ValueError, match=match):
        _native.obs_block(**args)


@needs_c
def test_obs_block_runs_on_a_strided_block():
    """A column block of a wider matrix (row stride > count) is accepted and computed in place;
    with U = I nothing is compensated, so kept weights stay and pruned ones become 0."""
    W = torch.randn(5, 24)
    block = W[:, 8:16]
    before = block.clone()
    prune = (torch.rand(5, 8) < 0.5).to(torch.uint8)
    keep = torch.empty(5, 24, dtype=torch.bool)
    losses = torch.zeros(5)
    _native.obs_block(block, torch.eye(8), prune, 0, 0, keep[:, 8:16], losses, block, None)
    assert torch.equal(keep[:, 8:16], prune == 0)
    assert torch.equal(block, before * (prune == 0))
    torch.testing.assert_close(losses, (before**2 * prune).sum(1) / 2)


@needs_c
def test_mask_and_flip_wrappers_refuse_bad_tensors():
    with pytest.raises(ValueError, match="scores must be contiguous"):
        _native.nm_mask(torch.randn(4, 16)[:, :8], 2, 4)
    with pytest.raises(ValueError, match="scores must be torch.float32 or torch.float64"):
        _native.topk_mask(torch.randn(4, 8).half(), 2)
    with pytest.raises(ValueError, match="n_prune=9"):
        _native.topk_mask(torch.randn(4, 8), 9)
    with pytest.raises(ValueError, match="m | cols"):
        _native.nm_mask(torch.randn(4, 6), 2, 4)
    with pytest.raises(ValueError, match=r"src must have shape \(4, 4\)"):
        _native.flip2d(torch.randn(4, 5))
    with pytest.raises(ValueError, match="flip2d writes float32 or float64"):
        _native.flip2d(torch.randn(4, 4), torch.float16)
    with pytest.raises(ValueError, match="k=40"):
        _native.block_prune_mask(torch.randn(5, 8), torch.eye(8), 40,
                                 torch.empty(5, 8, dtype=torch.uint8))
    assert support_matrix()["nm_mask"]["cpu"] is None


@pytest.mark.parametrize("rows,cols,n_prune", [(1, 1000, 500), (1, 777, 0), (3, 64, 64),
                                               (5, 301, 150)])
def test_topk_mask_equals_reference_with_ties(rows, cols, n_prune):
    """Issue #19 item 12: the index-buffer change keeps results identical, ties included."""
    from ssgr.ops.masks import reference

    g = torch.Generator().manual_seed(rows * cols)
    s = torch.randint(0, 7, (rows, cols), generator=g).float()  # many ties
    for t in (s, s.double()):
        want = reference.topk_mask(t, n_prune, "row")
        got = _native.topk_mask(t.contiguous(), n_prune)
        assert torch.equal(got.bool(), want.bool())


def test_topk_mask_memory_is_one_index_buffer():
    """A per-layer mask (one row of 10M scores, 2 OpenMP threads) allocates one 4-byte index
    buffer (40 MB) and the 10 MB mask; before #19 each thread held an 80 MB int64 buffer."""
    import os
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from ssgr.ops import _native\n"
        "s = torch.rand(1, 10_000_000)\n"
        "_native.topk_mask(torch.rand(1, 64), 10)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "_native.topk_mask(s, 5_000_000)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "2"}, check=True)
    grown_mib = float(r.stdout.split()[-1])
    assert grown_mib < 70, f"topk_mask grew the peak RSS by {grown_mib:.0f} MiB"


@needs_c
@pytest.mark.parametrize("n", [1, 2, 3, 8, 257, 1000])
def test_narrow_in_place_equals_to_float32(seed, n):
    """``narrow_`` rounds a float64 matrix to float32 inside its own storage, bit for bit as
    ``.to(torch.float32)`` (round to nearest even, overflow to inf, subnormals), every row
    although each float row overwrites double rows before it."""
    A = torch.randn(n, n, dtype=torch.float64) * torch.logspace(-40, 40, n, dtype=torch.float64)
    A.view(-1)[:: max(1, n // 3)] = torch.tensor(1 + 2 ** -24, dtype=torch.float64)  # a tie
    expected = A.to(torch.float32)
    buf = A.clone()
    L = _native.narrow_(buf)
    assert L.dtype == torch.float32 and L.shape == (n, n) and L.is_contiguous()
    assert L.data_ptr() == buf.data_ptr()
    assert torch.equal(L, expected)


def test_narrow_refuses_other_tensors():
    with pytest.raises(ValueError, match="A must be torch.float64"):
        _native.narrow_(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"A must have shape \(4, 4\)"):
        _native.narrow_(torch.randn(4, 5, dtype=torch.float64))

