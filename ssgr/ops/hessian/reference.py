"""Pure-torch reference of the Hessian op (the oracle; any device, float64-capable): registers
the ``reference`` backend of ``hessian``."""

from __future__ import annotations

import torch

from .._registry import register

#: Tokens per GEMM of the Hessian: each chunk's ``X_c^T X_c`` is summed inside the GEMM and
#: added to ``H`` with one rounding per entry, as IST-DASLab's ``add_batch`` adds one 256-token
#: sequence per call. A longer product lets a float32 GEMM sum thousands of tokens in one running
#: accumulator (and add each to the large entries of a massive-activation channel): on
#: SmolLM2-135M's layer-0 ``down_proj`` (16 x 256 WikiText tokens) one 4096-token GEMM has 3x
#: the max error of 256-token chunks against a float64 ``X^T X`` (README, "SparseGPT numerics on
#: real activations"). It also bounds the upcast copy of a long bf16 trace to ``chunk x c``.
HESSIAN_CHUNK = 256

#: Token chunk of the column squared norms (Wanda's statistic): only bounds the upcast copy
#: (torch's column sum is a pairwise reduction, whatever the length).
NORMS_CHUNK = 8192


@register("hessian", "reference", devices=("cpu", "cuda", "meta"))
def hessian_accumulate(H: torch.Tensor, X: torch.Tensor, chunk: int = HESSIAN_CHUNK) -> None:
    """``H[c, c] += X^T X`` for ``X[t, c]``, computed in ``H.dtype`` (fp32, or fp64 as oracle).

    X is upcast and multiplied ``chunk`` tokens at a time (:data:`HESSIAN_CHUNK`), each chunk's
    product added into H by the GEMM (``addmm_``).
    """
    for s in range(0, X.shape[0], chunk):
        xc = X[s : s + chunk].to(H.dtype)
        H.addmm_(xc.T, xc)


def col_sq_norms_accumulate(S: torch.Tensor, X: torch.Tensor, chunk: int = NORMS_CHUNK) -> None:
    """``S[c] += sum_t X[t, c]^2`` (Wanda's statistic, = diag(X^T X)), in ``S.dtype``."""
    for s in range(0, X.shape[0], chunk):
        S.add_(X[s : s + chunk].to(S.dtype).square().sum(0))
