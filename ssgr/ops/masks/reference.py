"""Pure-torch reference of the mask ops (the oracle; any device, float64-capable): registers the
``reference`` backend of ``nm_mask``, ``topk_mask`` and ``wanda_scores``.

Shapes: ``scores[r, c]``, ``W[r, c]``; masks are bool ``[r, c]``, True = kept.
"""

from __future__ import annotations

import torch

from .._registry import register


@register("nm_mask", "reference", devices=("cpu", "cuda"))
def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` (bool): the n largest of every m consecutive scores of a row.

    ``scores[r, c]`` with ``c % m == 0``. Ties keep the lower column (stable descending sort).
    """
    r, c = scores.shape
    g = scores.reshape(r, c // m, m)
    order = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros(g.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, order, True)
    return keep.reshape(r, c)


@register("topk_mask", "reference", devices=("cpu", "cuda"))
def topk_mask(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` (bool) pruning the ``n_prune`` smallest scores per row (``per="row"``,
    Wanda's selection) or in the whole matrix (``per="layer"``). Ties prune the lower index
    first (stable ascending sort, as Wanda's ``torch.sort(..., stable=True)``).
    """
    flat = scores.reshape(1, -1) if per == "layer" else scores
    keep = torch.ones(flat.shape, dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        idx = torch.sort(flat, dim=-1, stable=True).indices[:, :n_prune]
        keep.scatter_(1, idx, False)
    return keep.reshape(scores.shape)


@register("wanda_scores", "reference", devices=("cpu", "cuda"))
def wanda_scores(W: torch.Tensor, col_sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's metric ``|W[r, c]| * sqrt(col_sq_norms[c])`` in the promoted float dtype."""
    dtype = torch.promote_types(W.dtype, col_sq_norms.dtype)
    return W.to(dtype).abs() * col_sq_norms.to(dtype).sqrt().reshape(1, -1)
