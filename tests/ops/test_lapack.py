"""ssgr.ops._lapack.potrf_: the in-place Cholesky of torch's bundled LAPACK (the SparseGPT cpu
backend's factorisation) against torch.linalg.cholesky and a float64 oracle."""

from __future__ import annotations

import pytest
import torch
from _util import random_hessian

from ssgr.ops import _lapack


@pytest.mark.parametrize("c", [1, 7, 37, 300])
def test_potrf_equals_torch_cholesky(seed, c):
    H = random_hessian(c)
    H.diagonal().add_(0.01 * H.diagonal().mean())  # damped as sparsegpt_prune damps it
    A = H.clone()
    L = _lapack.potrf_(A)
    if _lapack.available():
        assert L.data_ptr() == A.data_ptr(), "factored in place"
    lower = L.tril()
    # vs a float64 oracle: no worse than 2x torch.linalg.cholesky's fp32 error (plus a few ulps)
    oracle = torch.linalg.cholesky(H.double())
    err = (lower.double() - oracle).abs().max().item()
    err_torch = (torch.linalg.cholesky(H).double() - oracle).abs().max().item()
    ulp = torch.finfo(torch.float32).eps * oracle.abs().max().item()
    assert err <= 2 * err_torch + 4 * ulp
    if c > 1 and _lapack.available():  # the strict upper triangle (not part of L) is left alone
        assert torch.equal(L.triu(1), H.triu(1))


def test_potrf_backward_error_on_ill_conditioned_input(seed):
    """Undamped, H is ill-conditioned (cond ~1e5-1e8), so L itself is ill-determined in fp32;
    ``L L^T`` must still reproduce H to fp32 accuracy."""
    H = random_hessian(300)
    lower = _lapack.potrf_(H.clone()).tril().double()
    recon = (lower @ lower.T - H.double()).abs().max().item()
    assert recon <= 1e-5 * H.diagonal().max().item()


def test_potrf_not_positive_definite_raises():
    A = torch.eye(5)
    A[3, 3] = -1.0
    with pytest.raises(torch.linalg.LinAlgError, match="order 4"):
        _lapack.potrf_(A.clone())


@pytest.mark.parametrize(
    "A",
    [torch.eye(4, dtype=torch.float64), torch.eye(6)[:, ::2].contiguous(), torch.eye(4).T],
    ids=["float64", "not-square", "not-contiguous"],
)
def test_potrf_rejects_other_layouts(A):
    with pytest.raises(ValueError, match="potrf_"):
        _lapack.potrf_(A)


def test_potrf_falls_back_to_torch(seed, monkeypatch):
    monkeypatch.setattr(_lapack, "_spotrf", lambda: None)
    H = random_hessian(20)
    torch.testing.assert_close(_lapack.potrf_(H.clone()).tril(), torch.linalg.cholesky(H))
