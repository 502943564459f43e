"""Public kernel API of ssgr: Hessian accumulation, SparseGPT (blocked OBS), masks.

Every op takes ``backend: str | None`` (None dispatches by device; see :mod:`ssgr.ops._registry`
and ``ssgr info``). ``ssgr.ops.reference`` holds the pure-torch oracle.
"""

from ._registry import BACKENDS, BackendError, support_matrix
from .hessian import HessianAccumulator, hessian_accumulate
from .masks import nm_mask, topk_mask, wanda_scores
from .obs import CholeskyError, SparseGPTResult, sparsegpt_prune

__all__ = [
    "BACKENDS",
    "BackendError",
    "CholeskyError",
    "HessianAccumulator",
    "SparseGPTResult",
    "hessian_accumulate",
    "nm_mask",
    "sparsegpt_prune",
    "support_matrix",
    "topk_mask",
    "wanda_scores",
]
