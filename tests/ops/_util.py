"""Helpers for the op tests: random Hessians, the llm-compressor peer, and the near-tie rule for
comparing SparseGPT results of implementations that factor H differently."""

from __future__ import annotations

import torch

from ssgr.compat.peers import llmcompressor_sparsify as peer_sparsify

# the near-tie rule (near_tie_allowed) lives in the package, shared with the first-use self-check
# and ``ssgr selftest``
from ssgr.ops.selftest import near_tie_allowed

__all__ = ["assert_same_prune", "peer_sparsify", "random_hessian"]


def random_hessian(c: int, tokens: int | None = None, device: str = "cpu", dtype=torch.float32):
    """``X^T X / t`` of correlated random activations ``X[t, c]`` (t = 3c by default)."""
    t = tokens if tokens is not None else 3 * c
    X = torch.randn(t, c, dtype=torch.float64)
    X = X @ (torch.randn(c, c, dtype=torch.float64) * 0.3 + torch.eye(c, dtype=torch.float64))
    return (X.T @ X / t).to(device=device, dtype=dtype)


def assert_same_prune(out, ref, *, rtol: float = 1e-4, atol: float = 1e-4,
                      loss_rel: float | None = 1e-4) -> int:
    """``out`` and ``ref`` (``SparseGPTResult``) agree: masks up to the near-tie rule, weights to
    ``rtol``/``atol`` on every row whose mask agrees (a flipped decision changes that row's later
    compensation), losses to ``loss_rel``. Returns the number of mismatched mask entries."""
    assert out.mask.shape == ref.mask.shape and out.mask.dtype == torch.bool
    diff = out.mask != ref.mask
    mism = int(diff.sum())
    allowed = near_tie_allowed(diff.numel())
    assert mism <= allowed, f"{mism} mask entries differ (near-tie rule allows {allowed})"
    rows = ~diff.any(1)
    torch.testing.assert_close(out.weight[rows].float(), ref.weight[rows].float(),
                               rtol=rtol, atol=atol)
    if loss_rel is not None:
        assert abs(out.loss - ref.loss) <= loss_rel * abs(ref.loss)
    return mism
