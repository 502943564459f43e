"""The ``cpu`` backend of ``hessian``: a blocked SYRK in torch (its GEMMs are torch's)."""

from __future__ import annotations

import torch

from .._precision import ieee_fp32
from .._registry import register
from . import reference

#: Column-block width of the symmetric update (a multiple of 64 keeps the GEMM tiles aligned); it
#: skips a fraction ``(1 - block / d) / 2`` of the multiply-adds (33% at d=576, 44% at d=1536).
SYRK_BLOCK = 192


@register("hessian", "cpu", devices=("cpu",))
def hessian(H: torch.Tensor, X: torch.Tensor, block: int = SYRK_BLOCK,
            chunk: int = reference.HESSIAN_CHUNK) -> None:
    """``H[d, d] += X^T X`` computing only the upper block triangle (a blocked SYRK).

    X ``[t, d]`` is upcast chunk by chunk; for every column block ``j`` one GEMM adds
    ``X[:, :j1]^T X[:, j]`` into ``H[:j1, j]`` (about half the multiply-adds of the full product),
    then each strictly-lower block is copied from its transpose. H must be symmetric on entry (as
    every accumulated Hessian is); the result is then exactly symmetric outside the diagonal
    blocks and symmetric to fp32 rounding inside them. The GEMMs run in IEEE float32 whatever the
    global ``torch.set_float32_matmul_precision`` (:func:`ssgr.ops._precision.ieee_fp32`).
    """
    with ieee_fp32():
        _syrk(H, X, block, chunk)


def _syrk(H: torch.Tensor, X: torch.Tensor, block: int, chunk: int) -> None:
    d = H.shape[0]
    if d <= block:
        reference.hessian_accumulate(H, X, chunk)
        return
    for s in range(0, X.shape[0], chunk):
        xc = X[s : s + chunk].to(H.dtype)
        for j0 in range(0, d, block):
            j1 = min(j0 + block, d)
            H[:j1, j0:j1].addmm_(xc[:, :j1].T, xc[:, j0:j1])
    for j0 in range(block, d, block):
        j1 = min(j0 + block, d)
        H[j0:j1, :j0] = H[:j0, j0:j1].T
