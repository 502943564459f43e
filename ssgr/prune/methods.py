"""One module's pruning step for each method: SparseGPT, Wanda, magnitude."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ssgr.ops import HessianAccumulator, nm_mask, sparsegpt_prune, topk_mask, wanda_scores
from ssgr.ops._registry import resolve
from ssgr.ops.masks import nm_call, topk_call
from ssgr.ops.sparsegpt import sparsegpt_call

from .errors import PruneError
from .pattern import Pattern

METHODS = ("sparsegpt", "wanda", "magnitude")


class ModuleResult(NamedTuple):
    """weight ``[r, c]`` (W's dtype), keep mask ``[r, c]`` bool, loss / damping (SparseGPT only)
    and the backend that ran."""

    weight: torch.Tensor
    mask: torch.Tensor
    loss: float | None
    damping: float | None
    backend: str


def prune_weight(
    W: torch.Tensor,
    acc: HessianAccumulator | None,
    method: str,
    pattern: Pattern,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    scope: str = "row",
    backend: str | None = None,
    H: torch.Tensor | None = None,
) -> ModuleResult:
    """Prune ``W[r, c]`` with ``method``.

    Args:
        acc: the module input's statistics (None for magnitude).
        scope: where an unstructured ratio is applied for Wanda / magnitude: ``row`` or ``layer``
            (SparseGPT's unstructured masks are chosen per block of ``blocksize`` columns).
        H: the token-averaged Hessian ``[c, c]`` if already computed (shared by a group).
    Raises:
        PruneError for an unknown method; the ops' ``ValueError`` for a shape the pattern does
        not fit (the engine names the module).
    """
    if method == "sparsegpt":
        Hm = H if H is not None else acc.hessian()
        res = sparsegpt_prune(W, Hm, blocksize=blocksize, percdamp=percdamp, backend=backend,
                              **pattern.op_kwargs())
        # the backend that took this call (dispatch depends on the call's properties)
        used, _ = resolve("sparsegpt", W.device, backend,
                          **sparsegpt_call(W, Hm, blocksize=blocksize, **pattern.op_kwargs()))
        return ModuleResult(res.weight, res.mask, res.loss, res.damping, used)
    if method == "wanda":
        scores = wanda_scores(W, acc.col_sq_norms().to(W.device), backend=backend)
    elif method == "magnitude":
        scores = W.abs().float()
    else:
        raise PruneError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if pattern.is_nm:
        keep = nm_mask(scores, pattern.n, pattern.m, backend=backend)
        used, _ = resolve("nm_mask", W.device, backend, **nm_call(scores, pattern.n, pattern.m))
    else:
        keep = topk_mask(scores, pattern.sparsity, scope, backend=backend)
        used, _ = resolve("topk_mask", W.device, backend, **topk_call(scores, scope))
    return ModuleResult(W * keep.to(W.dtype), keep, None, None, used)
