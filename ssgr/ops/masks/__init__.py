"""Mask extraction: N:M keep masks, unstructured top-k (per row or per layer), Wanda scores.

All masks are bool ``[r, c]`` with True where a weight is kept; N:M groups run along the input
dimension c (consecutive columns of a row).

Implementations, one file each: ``reference.py`` (pure torch, the oracle), ``cpu.py`` (C++,
csrc/masks.cpp), ``gpu.py`` (``triton``: ``ssgr.kernels.masks``; ``cuda``: csrc/masks.cu).
"""

from __future__ import annotations

import torch

from ssgr.errors import InputError

from .. import _checks
from .._registry import resolve


def _scores(scores: torch.Tensor) -> torch.Tensor:
    _checks.tensor("scores", scores, ndim=2)
    _checks.floating("scores", scores)
    _checks.finite("scores", scores, "mask selection needs finite scores")
    return scores


def nm_call(scores: torch.Tensor, n: int, m: int) -> dict:
    """The properties of an :func:`nm_mask` call that dispatch checks against each
    implementation's ``supports``: ``dtype``, ``rows``, ``cols``, ``n``, ``m``."""
    return dict(dtype=scores.dtype, rows=scores.shape[0], cols=scores.shape[1], n=n, m=m)


def topk_call(scores: torch.Tensor, per: str) -> dict:
    """The properties of a :func:`topk_mask` call that dispatch checks against each
    implementation's ``supports`` (and that pick the order: see ``ssgr info``): ``dtype``,
    ``rows``, ``cols``, ``per``."""
    return dict(dtype=scores.dtype, rows=scores.shape[0], cols=scores.shape[1], per=per)


def wanda_call(W: torch.Tensor, col_sq_norms: torch.Tensor) -> dict:
    """The properties of a :func:`wanda_scores` call: ``dtype`` (W's) and ``norms_dtype``."""
    return dict(dtype=W.dtype, norms_dtype=col_sq_norms.dtype)


def nm_mask(scores: torch.Tensor, n: int, m: int, *, backend: str | None = None) -> torch.Tensor:
    """Keep the n largest of every m consecutive scores in each row.

    Args:
        scores: ``[r, c]`` importance (e.g. ``|W|`` or Wanda scores); ``c % m == 0``.
        n, m: keep n of every m (2:4, 4:8, any ``0 < n < m``).
    Returns:
        bool ``[r, c]``, exactly n True per group; ties keep the lower column.
    Raises:
        InputError: scores not 2-D floating and finite, or a bad n:m for c.
        BackendError: a forced backend that cannot run here or cannot take this call.
    """
    _scores(scores)
    n, m = _checks.nm_pattern(n, m, scores.shape[1])
    _, fn = resolve("nm_mask", scores.device, backend, **nm_call(scores, n, m))
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
    Raises:
        InputError: scores not 2-D floating and finite, sparsity outside [0, 1), bad ``per``.
        BackendError: a forced backend that cannot run here or cannot take this call.

    On CUDA tensors a layer-wide mask dispatches to torch's device-wide sort (the reference)
    first, not to the one-block-per-row cuda kernel (``ssgr info`` shows the order).
    """
    _scores(scores)
    sparsity = _checks.sparsity_value("sparsity", sparsity)
    if per not in ("row", "layer"):
        raise InputError(f"per must be 'row' or 'layer', got {per!r}")
    count = scores.shape[1] if per == "row" else scores.numel()
    _, fn = resolve("topk_mask", scores.device, backend, **topk_call(scores, per))
    return fn(scores, int(count * sparsity), per)


def wanda_scores(
    W: torch.Tensor, col_sq_norms: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Wanda's metric ``|W| * sqrt(col_sq_norms)``.

    Args:
        W: ``[r, c]`` weights. col_sq_norms: ``[c]`` (``HessianAccumulator.col_sq_norms()``).
    Returns:
        ``[r, c]`` scores in the promoted float dtype.
    Raises:
        InputError: bad shapes, dtypes or devices, or negative norms.
        BackendError: a forced backend that cannot run here.
    """
    _checks.tensor("W", W, ndim=2)
    _checks.tensor("col_sq_norms", col_sq_norms, ndim=1)
    _checks.floating("W", W)
    _checks.floating("col_sq_norms", col_sq_norms)
    if col_sq_norms.shape[0] != W.shape[1]:
        raise InputError(
            f"col_sq_norms has {col_sq_norms.shape[0]} entries but W has {W.shape[1]} columns; "
            "pass the norms of this module's input"
        )
    _checks.same_device(W=W, col_sq_norms=col_sq_norms)
    if bool((col_sq_norms < 0).any()):
        raise InputError("col_sq_norms has negative entries; pass squared norms (sums of x^2)")
    _, fn = resolve("wanda_scores", W.device, backend, **wanda_call(W, col_sq_norms))
    return fn(W, col_sq_norms)
