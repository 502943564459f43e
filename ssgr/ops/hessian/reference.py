"""Pure-torch reference of the Hessian op (the oracle; any device, float64-capable): registers
the ``reference`` backend of ``hessian``."""

from __future__ import annotations

import torch

from .._registry import register

#: Token chunk for the Hessian: bounds the upcast copy of a long bf16 trace (32k x 5120 bf16
#: would be 640 MB in fp32) to ``chunk x c``.
HESSIAN_CHUNK = 8192


@register("hessian", "reference", devices=("cpu", "cuda", "meta"))
def hessian_accumulate(H: torch.Tensor, X: torch.Tensor, chunk: int = HESSIAN_CHUNK) -> None:
    """``H[c, c] += X^T X`` for ``X[t, c]``, computed in ``H.dtype`` (fp32, or fp64 as oracle).

    X is upcast chunk by chunk (``chunk`` tokens at a time).
    """
    for s in range(0, X.shape[0], chunk):
        xc = X[s : s + chunk].to(H.dtype)
        H.addmm_(xc.T, xc)


def col_sq_norms_accumulate(S: torch.Tensor, X: torch.Tensor, chunk: int = HESSIAN_CHUNK) -> None:
    """``S[c] += sum_t X[t, c]^2`` (Wanda's statistic, = diag(X^T X)), in ``S.dtype``."""
    for s in range(0, X.shape[0], chunk):
        S.add_(X[s : s + chunk].to(S.dtype).square().sum(0))
