"""Mask extraction: N:M keep masks, unstructured top-k (per row or per layer), Wanda scores.

All masks are bool ``[r, c]`` with True where a weight is kept; N:M groups run along the input
dimension c (consecutive columns of a row).
"""

from __future__ import annotations

import torch

from . import _checks, _cpu, reference
from ._registry import register, resolve

register("nm_mask", "reference", devices=("cpu", "cuda"))(reference.nm_mask)
register("topk_mask", "reference", devices=("cpu", "cuda"))(reference.topk_mask)
register("wanda_scores", "reference", devices=("cpu", "cuda"))(reference.wanda_scores)


def _cpu_scores(scores: torch.Tensor) -> torch.Tensor:
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores.contiguous()


@register("nm_mask", "cpu", devices=("cpu",), probe=_cpu.probe)
def _nm_mask_cpu(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    s = _cpu_scores(scores)
    keep = torch.empty(s.shape, dtype=torch.uint8)
    _cpu.lib().nm_mask(
        s.data_ptr(), s.dtype == torch.float64, s.shape[0], s.shape[1], n, m, keep.data_ptr()
    )
    return keep.bool()


@register("topk_mask", "cpu", devices=("cpu",), probe=_cpu.probe)
def _topk_mask_cpu(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    s = _cpu_scores(scores)
    flat = s.reshape(1, -1) if per == "layer" else s
    keep = torch.empty(flat.shape, dtype=torch.uint8)
    _cpu.lib().topk_mask(
        flat.data_ptr(), s.dtype == torch.float64, flat.shape[0], flat.shape[1], n_prune,
        keep.data_ptr(),
    )
    return keep.bool().reshape(scores.shape)


def _scores(scores: torch.Tensor) -> torch.Tensor:
    _checks.tensor("scores", scores, ndim=2)
    _checks.floating("scores", scores)
    _checks.finite("scores", scores, "mask selection needs finite scores")
    return scores


def nm_mask(scores: torch.Tensor, n: int, m: int, *, backend: str | None = None) -> torch.Tensor:
    """Keep the n largest of every m consecutive scores in each row.

    Args:
        scores: ``[r, c]`` importance (e.g. ``|W|`` or Wanda scores); ``c % m == 0``.
        n, m: keep n of every m (2:4, 4:8, any ``0 < n < m``).
    Returns:
        bool ``[r, c]``, exactly n True per group; ties keep the lower column.
    """
    _scores(scores)
    n, m = _checks.nm_pattern(n, m, scores.shape[1])
    _, fn = resolve("nm_mask", scores.device, backend)
    return fn(scores, n, m)


def topk_mask(
    scores: torch.Tensor, sparsity: float, per: str = "row", *, backend: str | None = None
) -> torch.Tensor:
    """Unstructured keep mask removing a ``sparsity`` fraction of the lowest scores.

    Args:
        scores: ``[r, c]``.
        sparsity: fraction in [0, 1) removed: ``int(c * sparsity)`` per row (``per="row"``,
            Wanda's choice) or ``int(r * c * sparsity)`` in the whole matrix (``per="layer"``).
    Returns:
        bool ``[r, c]``; ties prune the lower index first (stable ascending sort).
    """
    _scores(scores)
    sparsity = _checks.sparsity_value("sparsity", sparsity)
    if per not in ("row", "layer"):
        raise ValueError(f"per must be 'row' or 'layer', got {per!r}")
    count = scores.shape[1] if per == "row" else scores.numel()
    _, fn = resolve("topk_mask", scores.device, backend)
    return fn(scores, int(count * sparsity), per)


def wanda_scores(
    W: torch.Tensor, col_sq_norms: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Wanda's metric ``|W| * sqrt(col_sq_norms)``.

    Args:
        W: ``[r, c]`` weights. col_sq_norms: ``[c]`` (``HessianAccumulator.col_sq_norms()``).
    Returns:
        ``[r, c]`` scores in the promoted float dtype.
    """
    _checks.tensor("W", W, ndim=2)
    _checks.tensor("col_sq_norms", col_sq_norms, ndim=1)
    _checks.floating("W", W)
    _checks.floating("col_sq_norms", col_sq_norms)
    if col_sq_norms.shape[0] != W.shape[1]:
        raise ValueError(
            f"col_sq_norms has {col_sq_norms.shape[0]} entries but W has {W.shape[1]} columns; "
            "pass the norms of this module's input"
        )
    _checks.same_device(W=W, col_sq_norms=col_sq_norms)
    if bool((col_sq_norms < 0).any()):
        raise ValueError("col_sq_norms has negative entries; pass squared norms (sums of x^2)")
    _, fn = resolve("wanda_scores", W.device, backend)
    return fn(W, col_sq_norms)
