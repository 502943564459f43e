"""The GPU backends of ``hessian``: ``triton`` (``ssgr.kernels.hessian``) and ``cuda``
(``ssgr._cuda``, csrc/hessian.cu). Both accumulate a float32 H (tensor cores for bf16/fp16)."""

from __future__ import annotations

import torch

from ssgr.errors import InputError

from .. import _gpu
from .._registry import register


def _float32_h(H: torch.Tensor, backend: str) -> None:
    if H.dtype != torch.float32:
        raise InputError(
            f"the {backend} backend accumulates a float32 H (got {H.dtype}); use "
            "backend='reference' for a float64 oracle"
        )


@register("hessian", "triton", devices=_gpu.triton_devices, probe=_gpu.triton_probe)
def hessian_triton(H: torch.Tensor, X: torch.Tensor) -> None:
    """``H[d, d] += X^T X`` (fp32) for ``X[t, d]`` bf16/fp16/fp32."""
    _float32_h(H, "triton")
    with _gpu.launch_scope("hessian (triton)", H=H, X=X):
        _gpu.triton_kernels("hessian").hessian_accumulate(H, X)


def default_splits(tokens: int, d: int, device: torch.device) -> int:
    """Token splits per Hessian tile of the cuda kernel: about two waves of blocks, >= 256
    tokens per split."""
    tile = _gpu.cuda_lib().hessian_tile()
    nt = -(-d // tile)
    n_tiles = nt * (nt + 1) // 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(-(-2 * sms // n_tiles), 64, tokens // 256))


@register("hessian", "cuda", devices=("cuda",), probe=_gpu.cuda_probe)
def hessian_cuda(H: torch.Tensor, X: torch.Tensor) -> None:
    """``H[d, d] += X^T X`` (fp32; tensor cores for bf16/fp16) for ``X[t, d]``."""
    _float32_h(H, "cuda")
    if X.dtype == torch.float64:
        raise InputError("the cuda backend takes bf16/fp16/fp32 activations, not float64")
    with _gpu.launch_scope("hessian (cuda)", H=H, X=X) as device:
        splits = default_splits(X.shape[0], X.shape[1], device)
        _gpu.cuda_lib().hessian(H, X, splits=splits)
