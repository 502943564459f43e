"""The GPU backends of the mask ops: ``triton`` (``ssgr.kernels.masks``) and ``cuda``
(``ssgr._cuda``, csrc/masks.cu: one block per row; per layer is one long row)."""

from __future__ import annotations

import torch

from .. import _gpu
from .._registry import register


def _unit_stride(scores: torch.Tensor) -> torch.Tensor:
    return scores if scores.stride(-1) == 1 else scores.contiguous()


@register("nm_mask", "triton", devices=_gpu.triton_devices, probe=_gpu.triton_probe)
def nm_mask_triton(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool: n largest of every m (ties: lower column)."""
    with _gpu.launch_scope("nm_mask (triton)", scores=scores):
        return _gpu.triton_kernels("masks").nm_mask(_unit_stride(scores), n, m)


@register("topk_mask", "triton", devices=_gpu.triton_devices, probe=_gpu.triton_probe)
def topk_mask_triton(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool pruning the ``n_prune`` smallest per row or per layer."""
    s = _unit_stride(scores)
    flat = s.reshape(1, -1) if per == "layer" else s
    with _gpu.launch_scope("topk_mask (triton)", scores=scores):
        return _gpu.triton_kernels("masks").topk_mask(flat, n_prune).reshape(scores.shape)


@register("nm_mask", "cuda", devices=("cuda",), probe=_gpu.cuda_probe)
def nm_mask_cuda(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool: n largest of every m (ties: lower column)."""
    with _gpu.launch_scope("nm_mask (cuda)", scores=scores):
        return _gpu.cuda_lib().nm_mask(scores, n, m)


@register("topk_mask", "cuda", devices=("cuda",), probe=_gpu.cuda_probe)
def topk_mask_cuda(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool pruning the ``n_prune`` smallest per row or per layer."""
    flat = scores.reshape(1, -1) if per == "layer" else scores
    with _gpu.launch_scope("topk_mask (cuda)", scores=scores):
        return _gpu.cuda_lib().topk_mask(flat, n_prune).reshape(scores.shape)
