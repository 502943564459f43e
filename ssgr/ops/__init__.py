"""Public kernel API of ssgr: Hessian accumulation, SparseGPT (blocked OBS), masks.

Every op takes ``backend: str | None`` (None dispatches by device; see :mod:`ssgr.ops._registry`
and ``ssgr info``). One op, one package: ``ssgr/ops/hessian/``, ``ssgr/ops/sparsegpt/``,
``ssgr/ops/masks/``, each with the public function(s) in ``__init__.py`` and one file per
implementation (``reference.py``, ``cpu.py``, ``gpu.py``). ``ssgr.ops.reference`` holds the
pure-torch oracle of every op; ``ssgr.ops._native`` is the one boundary to the C++ extension.
Bad input raises :class:`ssgr.errors.InputError` (a ValueError).
"""

from ._registry import BACKENDS, BackendError, support_matrix
from .hessian import HessianAccumulator, hessian_accumulate
from .masks import nm_mask, topk_mask, wanda_scores
from .sparsegpt import CholeskyError, SparseGPTResult, sparsegpt_prune

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
