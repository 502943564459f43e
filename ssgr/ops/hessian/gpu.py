"""The GPU backends of ``hessian``: ``triton`` (``ssgr.kernels.hessian``) and ``cuda``
(``ssgr._cuda``, csrc/hessian.cu). Both accumulate a float32 H (tensor cores for bf16/fp16)."""

from __future__ import annotations

import torch

from ssgr.errors import InputError

from .. import _gpu
from .._registry import register

#: X dtypes the GPU Hessian kernels read (tensor cores for bf16/fp16, IEEE fp32 FMA for fp32).
GPU_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Largest d of the Triton kernel: offsets inside a tile are 32-bit (``BM * d < 2**31``, BM <= 128
#: in ``ssgr.kernels.hessian.GPU_CONFIGS``).
TRITON_MAX_D = (2**31 - 1) // 128
GPU_LIMITS = "float32 H only (float64 H: reference); X float32/bfloat16/float16"


def gpu_supports(*, H_dtype: torch.dtype | None = None, dtype: torch.dtype | None = None,
                 **_: object) -> str | None:
    """Capability of both GPU Hessian kernels: None when they take a call with this H dtype and
    X dtype (``dtype``), else why not."""
    if H_dtype is not None and H_dtype != torch.float32:
        return (f"it accumulates a float32 H, not {H_dtype}; the reference accumulates a "
                "float64 H (the float64 oracle)")
    if dtype is not None and dtype not in GPU_X_DTYPES:
        return f"it reads float32/bfloat16/float16 X, not {dtype}"
    return None


def triton_supports(*, d: int | None = None, **call: object) -> str | None:
    """:func:`gpu_supports`, and d within the kernel's 32-bit in-tile offsets."""
    if d is not None and d > TRITON_MAX_D:
        return f"d={d} exceeds the kernel's 32-bit in-tile offsets (d <= {TRITON_MAX_D})"
    return gpu_supports(**call)


def _float32_h(H: torch.Tensor, backend: str) -> None:
    if H.dtype != torch.float32:
        raise InputError(
            f"the {backend} backend accumulates a float32 H (got {H.dtype}); use "
            "backend='reference' for a float64 oracle"
        )


@register("hessian", "triton", devices=_gpu.triton_devices, probe=_gpu.triton_probe,
          supports=triton_supports, limits=f"{GPU_LIMITS}; d <= {TRITON_MAX_D}")
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


@register("hessian", "cuda", devices=("cuda",), probe=_gpu.cuda_probe, supports=gpu_supports,
          limits=GPU_LIMITS)
def hessian_cuda(H: torch.Tensor, X: torch.Tensor) -> None:
    """``H[d, d] += X^T X`` (fp32; tensor cores for bf16/fp16) for ``X[t, d]``."""
    _float32_h(H, "cuda")
    if X.dtype == torch.float64:
        raise InputError("the cuda backend takes bf16/fp16/fp32 activations, not float64")
    with _gpu.launch_scope("hessian (cuda)", H=H, X=X) as device:
        splits = default_splits(X.shape[0], X.shape[1], device)
        _gpu.cuda_lib().hessian(H, X, splits=splits)
