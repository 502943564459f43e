"""Glue of the ``cuda`` backend: the extension ``ssgr._cuda`` built from csrc/*.cu and
csrc/cuda_ops.cpp by setup.py where torch has CUDA and nvcc is found.

Available when ``ssgr._cuda`` imports and a CUDA device exists. Implemented ops: ``hessian``,
``sparsegpt`` (fused OBS block kernel; blocksize <= 128, N:M groups m <= 32), ``nm_mask``,
``topk_mask`` (one block per row; per layer is one long row), plus :func:`pack_24`. Importing
this module imports nothing compiled; the probe does.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from ._registry import register
from ._triton import blocked_sparsegpt, check_24

MAX_BLOCK = 128


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from ssgr import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, (
            f"the CUDA extension ssgr._cuda is not built ({exc}); on a machine with nvcc and a "
            "CUDA torch run `TORCH_CUDA_ARCH_LIST=9.0a pip install --no-build-isolation "
            "--no-deps -e .` (or `make gpu`)"
        )
    return _cuda, None


def probe() -> str | None:
    """None when ``ssgr._cuda`` imports and a CUDA device exists, else why not."""
    reason = _load()[1]
    if reason is not None:
        return reason
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def lib() -> ModuleType:
    """The loaded ``ssgr._cuda`` module (call only after :func:`probe` returned None)."""
    mod, reason = _load()
    if mod is None:
        raise RuntimeError(reason)
    return mod


def default_splits(tokens: int, d: int, device: torch.device) -> int:
    """Token splits per Hessian tile: about two waves of blocks, >= 256 tokens per split."""
    tile = lib().hessian_tile()
    nt = -(-d // tile)
    n_tiles = nt * (nt + 1) // 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(-(-2 * sms // n_tiles), 64, tokens // 256))


@register("hessian", "cuda", devices=("cuda",), probe=probe)
def hessian(H: torch.Tensor, X: torch.Tensor, sq: torch.Tensor | None = None) -> None:
    """``H[d, d] += X^T X`` (fp32; tensor cores for bf16/fp16) for ``X[t, d]``; ``sq[d]`` gets
    the column squared norms from the same pass when given."""
    if H.dtype != torch.float32:
        raise ValueError(
            f"the cuda backend accumulates a float32 H (got {H.dtype}); use "
            "backend='reference' for a float64 oracle"
        )
    if X.dtype == torch.float64:
        raise ValueError("the cuda backend takes bf16/fp16/fp32 activations, not float64")
    lib().hessian(H, X, sq, default_splits(X.shape[0], X.shape[1], H.device))


def _obs_block(W1, U, prune, n_prune, m, keep, err, losses) -> None:
    rows = W1.shape[0]
    sms = torch.cuda.get_device_properties(W1.device).multi_processor_count
    per_block = 64 if rows >= 64 * 2 * sms else 32
    lib().obs_block(W1, U, prune, n_prune, m, keep, err, losses, per_block)


@register("sparsegpt", "cuda", devices=("cuda",), probe=probe)
def sparsegpt(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT with the fused CUDA OBS block kernel (see ``_triton.blocked_sparsegpt``)."""
    if blocksize > MAX_BLOCK:
        raise ValueError(
            f"the cuda backend runs blocks of at most {MAX_BLOCK} columns (got blocksize="
            f"{blocksize}); use blocksize<={MAX_BLOCK} or backend='triton'"
        )
    if n_prune > 0 and m > lib().obs_max_m():
        raise ValueError(
            f"the cuda backend selects N:M groups of at most {lib().obs_max_m()} (got m={m}); "
            "use backend='triton'"
        )
    return blocked_sparsegpt(W, H, sparsity, n_prune, m, blocksize, percdamp, _obs_block)


@register("nm_mask", "cuda", devices=("cuda",), probe=probe)
def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool: n largest of every m (ties: lower column)."""
    return lib().nm_mask(scores, n, m)


@register("topk_mask", "cuda", devices=("cuda",), probe=probe)
def topk_mask(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool pruning the ``n_prune`` smallest per row or per layer."""
    flat = scores.reshape(1, -1) if per == "layer" else scores
    return lib().topk_mask(flat, n_prune).reshape(scores.shape)


def pack_24(W: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2:4 packing of ``W[r, c]`` with its keep mask: ``(values[r, c/2], meta[r, c/8] uint8)``,
    the layout of ``ssgr.kernels.masks.pack_24``."""
    reason = probe()
    if reason is not None:
        raise RuntimeError(f"the cuda backend is unavailable: {reason}")
    check_24(W, keep)
    return lib().pack_24(W, keep)
