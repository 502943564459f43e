"""The GPU backends of ``sparsegpt``: one host loop (:func:`blocked_sparsegpt`) around a fused
OBS block kernel, ``triton`` (``ssgr.kernels.sparsegpt``) or ``cuda`` (``ssgr._cuda``,
csrc/sparsegpt.cu: blocks of at most 128 columns, N:M groups of at most ``obs_max_m()``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ssgr.errors import InputError

from .. import _gpu
from .._registry import register
from ._common import damped, factor_dtype, prepare

#: Widest block of the Triton OBS kernel: it holds ``BC = next_power_of_2(blocksize)`` columns of
#: its rows in registers, compiled spill-free for sm_90a up to BC=256
#: (benchmarks/results/sm90a-static.md).
TRITON_MAX_BLOCK = 256
#: Widest N:M group of the cuda OBS kernel (``MAX_M`` in csrc/sparsegpt.cu; ``obs_max_m()``).
CUDA_MAX_M = 32


def _fp32_only(dtype: torch.dtype | None, H_dtype: torch.dtype | None) -> str | None:
    if torch.float64 in (dtype, H_dtype):
        return ("it computes in float32; a float64 W or H is computed in float64 by the "
                "reference")
    return None


def triton_supports(*, dtype: torch.dtype | None = None, H_dtype: torch.dtype | None = None,
                    blocksize: int | None = None, **_: object) -> str | None:
    """None when the triton backend takes the call (float32 computation, blocks of at most
    :data:`TRITON_MAX_BLOCK` columns), else why not."""
    if blocksize is not None and blocksize > TRITON_MAX_BLOCK:
        return (f"its OBS kernel holds blocks of at most {TRITON_MAX_BLOCK} columns in registers "
                f"(got blocksize={blocksize})")
    return _fp32_only(dtype, H_dtype)


def cuda_supports(*, dtype: torch.dtype | None = None, H_dtype: torch.dtype | None = None,
                  blocksize: int | None = None, m: int = 0, **_: object) -> str | None:
    """None when the cuda backend takes the call (float32 computation, blocks of at most
    ``CUDA_MAX_BLOCK`` columns, N:M groups of at most :data:`CUDA_MAX_M`), else why not."""
    if blocksize is not None and blocksize > CUDA_MAX_BLOCK:
        return (f"its OBS kernel runs blocks of at most {CUDA_MAX_BLOCK} columns (got "
                f"blocksize={blocksize})")
    if m and m > CUDA_MAX_M:
        return f"its OBS kernel selects N:M groups of at most {CUDA_MAX_M} (got m={m})"
    return _fp32_only(dtype, H_dtype)

#: Largest block (columns) of the cuda OBS kernel.
CUDA_MAX_BLOCK = 128


#: Column-block width of the triangular inversion ``U = T^-1`` (bounds its temporary).
INVERSE_BLOCK = 2048


def _inverse_factor_flipped(H: torch.Tensor, damp: torch.Tensor,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``U[c, c]`` float32, upper, row-major: the upper Cholesky factor of ``(H + damp I)^-1``,
    computed as ``U = T^-1`` with ``T = J chol(J (H + damp I) J) J`` (``H + damp I = T T^T``, J
    reverses the order). ``H[c, c]`` float32; ``damp`` a scalar tensor. The Cholesky and the
    inversion run in ``dtype`` (float64 by default, :func:`ssgr.ops.sparsegpt._common.
    factor_dtype`) and U is rounded to float32 at the end; the inversion goes by column blocks of
    :data:`INVERSE_BLOCK` (``U[:j2, j1:j2] = T[:j2, :j2]^-1 E[:j2, j1:j2]``, E the identity).
    Beside H it holds two ``[c, c]`` matrices in ``dtype`` while factoring (16 c^2 bytes for
    float64), then T, the float32 U and two ``[c, min(c, INVERSE_BLOCK)]`` blocks in ``dtype``
    while inverting (``12 c^2 + 16 c min(c, INVERSE_BLOCK)`` bytes for float64: up to 28 c^2
    for c <= INVERSE_BLOCK). Raises ``torch.linalg.LinAlgError`` when the damped H is not
    positive definite."""
    Hf = H.flip(0, 1).to(dtype)  # damping the diagonal commutes with the flip
    Hf.diagonal().add_(damp.to(dtype))
    L = torch.linalg.cholesky(Hf)
    del Hf
    T = L.flip(0, 1)
    del L
    c = T.shape[0]
    U = torch.zeros(c, c, dtype=torch.float32, device=T.device)
    for j1 in range(0, c, INVERSE_BLOCK):
        j2 = min(j1 + INVERSE_BLOCK, c)
        E = torch.zeros(j2, j2 - j1, dtype=dtype, device=T.device)
        E[j1:j2].fill_diagonal_(1)
        U[:j2, j1:j2] = torch.linalg.solve_triangular(T[:j2, :j2], E, upper=True)
    return U


def unstructured_prune(W1: torch.Tensor, Ubb: torch.Tensor, sparsity: float) -> torch.Tensor:
    """uint8 ``[r, b]`` prune mask of one block, for both GPU backends: every ``w^2 / U_ii^2`` <=
    the ``int(numel * sparsity)``-th smallest (0-based; ties prune more), as the reference's
    sort, found with ``kthvalue`` (the cpu backend applies the same rule by a radix select,
    ``block_prune_mask_f32`` in csrc/sparsegpt.cpp)."""
    tmp = W1**2 / (torch.diag(Ubb).reshape((1, -1))) ** 2
    k = int(tmp.numel() * sparsity)
    if k == 0:  # the block's share rounds to no weight: prune none
        return torch.zeros_like(tmp, dtype=torch.uint8)
    thresh = torch.kthvalue(tmp.flatten(), k + 1).values
    return (tmp <= thresh).to(torch.uint8).contiguous()


#: ``block_fn(W1, U_bb, prune, n_prune, m, keep, err, losses)``: one fused OBS block in place.
BlockFn = Callable[
    [torch.Tensor, torch.Tensor, "torch.Tensor | None", int, int, torch.Tensor, torch.Tensor,
     torch.Tensor], None,
]


def blocked_sparsegpt(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float, block_fn: BlockFn,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT on ``W[r, c]`` with ``H[c, c]`` in fp32 around a fused block kernel (shared by the
    triton and cuda backends). torch.linalg (cuSOLVER on a GPU) factors the damped H with the
    retries of :func:`ssgr.ops.sparsegpt._common.damped`: ``T = U^-1`` from one Cholesky, ``U``
    by triangular solves, both in float64 unless ``SSGR_SPARSEGPT_FACTOR=float32``
    (:func:`_inverse_factor_flipped`), U then rounded to float32. Per block: the unstructured
    prune mask (a threshold over the whole block, in torch), ``block_fn(W1, U_bb, prune,
    n_prune, m, keep, err, losses)`` (the fused column loop, in place), then the trailing update
    ``W[:, i2:] -= Err @ U[i1:i2, i2:]`` (one GEMM). Everything runs inside
    :func:`ssgr.ops._gpu.launch_scope` (W's device current, IEEE float32 GEMMs). Returns
    ``(Q[r, c] fp32, keep[r, c] bool, loss, damping)``; raises InputError when W and H are on
    different devices."""
    with _gpu.launch_scope("sparsegpt", W=W, H=H):
        return _blocked(W, H, sparsity, n_prune, m, blocksize, percdamp, block_fn)


def _blocked(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float, block_fn: BlockFn,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    Wc, Hc = prepare(W, H, torch.float32)
    factor = functools.partial(_inverse_factor_flipped, dtype=factor_dtype())
    U, damping = damped(Hc, percdamp, factor)
    del Hc
    rows, cols = Wc.shape
    keep = torch.empty(rows, cols, dtype=torch.bool, device=Wc.device)
    losses = torch.zeros(rows, dtype=torch.float32, device=Wc.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = Wc[:, i1:i2]
        Ub = U[i1:i2, i1:i2]
        prune = unstructured_prune(W1, Ub, sparsity) if n_prune == 0 else None
        kb = torch.empty(rows, count, dtype=torch.uint8, device=Wc.device)
        eb = torch.empty(rows, count, dtype=torch.float32, device=Wc.device)
        block_fn(W1, Ub, prune, n_prune, m, kb, eb, losses)
        keep[:, i1:i2] = kb.bool()
        if i2 < cols:
            Wc[:, i2:].addmm_(eb, U[i1:i2, i2:], alpha=-1)
    return Wc, keep, float(losses.sum().item()), damping


@register("sparsegpt", "triton", devices=_gpu.triton_devices, probe=_gpu.triton_probe,
          supports=triton_supports,
          limits=f"blocksize <= {TRITON_MAX_BLOCK}; float32 computation (float64 factor): no "
                 "float64 W/H")
def sparsegpt_triton(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT with the fused Triton OBS block kernel (see :func:`blocked_sparsegpt`)."""
    obs_block = _gpu.triton_kernels("sparsegpt").obs_block
    return blocked_sparsegpt(W, H, sparsity, n_prune, m, blocksize, percdamp, obs_block)


def _cuda_obs_block(W1, U, prune, n_prune, m, keep, err, losses) -> None:
    rows = W1.shape[0]
    sms = torch.cuda.get_device_properties(W1.device).multi_processor_count
    per_block = 64 if rows >= 64 * 2 * sms else 32
    _gpu.cuda_lib().obs_block(W1, U, prune, n_prune, m, keep, err, losses, per_block)


@register("sparsegpt", "cuda", devices=("cuda",), probe=_gpu.cuda_probe, supports=cuda_supports,
          limits=f"blocksize <= {CUDA_MAX_BLOCK}; m <= {CUDA_MAX_M}; "
                 "float32 computation (float64 factor): no float64 W/H")
def sparsegpt_cuda(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT with the fused CUDA OBS block kernel (see :func:`blocked_sparsegpt`). Raises
    InputError for a blocksize or N:M group the kernel does not take."""
    if blocksize > CUDA_MAX_BLOCK:
        raise InputError(
            f"the cuda backend runs blocks of at most {CUDA_MAX_BLOCK} columns (got blocksize="
            f"{blocksize}); use blocksize<={CUDA_MAX_BLOCK} or backend='triton'"
        )
    max_m = _gpu.cuda_lib().obs_max_m()
    if n_prune > 0 and m > max_m:
        raise InputError(
            f"the cuda backend selects N:M groups of at most {max_m} (got m={m}); "
            "use backend='triton'"
        )
    return blocked_sparsegpt(W, H, sparsity, n_prune, m, blocksize, percdamp, _cuda_obs_block)
