"""The ``cpu`` backend of the mask ops (C++/OpenMP, csrc/masks.cpp, through the typed wrappers of
:mod:`ssgr.ops._native`). Scores are taken as float32 or float64 (other dtypes are upcast to
float32, which is exact for bf16/fp16)."""

from __future__ import annotations

import torch

from .. import _native
from .._registry import register


def _cpu_scores(scores: torch.Tensor) -> torch.Tensor:
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores.contiguous()


@register("nm_mask", "cpu", devices=("cpu",), probe=_native.probe)
def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool: n largest of every m (ties: lower column)."""
    return _native.nm_mask(_cpu_scores(scores), n, m).bool()


@register("topk_mask", "cpu", devices=("cpu",), probe=_native.probe)
def topk_mask(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool pruning the ``n_prune`` smallest per row or per layer."""
    s = _cpu_scores(scores)
    flat = s.reshape(1, -1) if per == "layer" else s
    return _native.topk_mask(flat, n_prune).bool().reshape(scores.shape)
