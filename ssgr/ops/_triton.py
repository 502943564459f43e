"""Glue of the ``triton`` backend (kernels in ``ssgr.kernels``, source ``kernels/``).

Available when triton imports and either a CUDA device exists or ``TRITON_INTERPRET=1`` was set
before triton was imported (then the kernels also accept CPU tensors, run by triton's numpy
interpreter: slow, for CI at small shapes). On CPU tensors the normal dispatch never picks triton
(``cpu > reference``); force it with ``backend="triton"`` or ``SSGR_BACKEND=triton``.

Importing this module imports neither triton nor the kernels; the probe does, once, and only when
the backend could run. Implemented ops: ``hessian``, ``sparsegpt``, ``nm_mask``, ``topk_mask``,
plus :func:`pack_24` (2:4 packing, not a dispatched op).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from types import ModuleType

import torch

from . import _checks
from ._registry import register
from .obs import _damped, _inverse_factor_flipped, _prepare, _unstructured_prune


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _load() -> tuple[dict[str, ModuleType] | None, str | None]:
    if not (torch.cuda.is_available() or _interpret_env()):
        return None, (
            "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernels "
            "on CPU tensors in triton's interpreter)"
        )
    try:
        mods = {
            name: importlib.import_module(f"ssgr.kernels.{name}")
            for name in ("hessian", "sparsegpt", "masks")
        }
    except ImportError as exc:
        return None, f"triton is not importable ({exc}); pip install triton"
    if not torch.cuda.is_available():
        # @triton.jit reads TRITON_INTERPRET when the kernel module is imported: kernels imported
        # before it was set would try to compile for a GPU that is not there
        kern = mods["sparsegpt"]._obs_block_kernel
        if type(kern).__name__ != "InterpretedFunction":
            return None, (
                "ssgr.kernels was imported before TRITON_INTERPRET=1 was set; set it before "
                "the first import"
            )
    return mods, None


def probe() -> str | None:
    """None when the triton backend can run here, else why not."""
    return _load()[1]


def devices() -> tuple[str, ...]:
    """Device types the triton kernels accept: cuda, and cpu under the interpreter."""
    return ("cuda", "cpu") if _interpret_env() else ("cuda",)


def _k(name: str) -> ModuleType:
    mods, reason = _load()
    if mods is None:
        raise RuntimeError(reason)
    return mods[name]


# ------------------------------------------------------------------------------------------ ops


@register("hessian", "triton", devices=devices, probe=probe)
def hessian(H: torch.Tensor, X: torch.Tensor) -> None:
    """``H[d, d] += X^T X`` (fp32) for ``X[t, d]`` bf16/fp16/fp32."""
    if H.dtype != torch.float32:
        raise ValueError(
            f"the triton backend accumulates a float32 H (got {H.dtype}); use "
            "backend='reference' for a float64 oracle"
        )
    _k("hessian").hessian_accumulate(H, X)


def hessian_with_norms(H: torch.Tensor, X: torch.Tensor, sq: torch.Tensor) -> None:
    """``H[d, d] += X^T X`` and ``sq[d] += sum_t X[t]^2`` from the same pass (fp32)."""
    _k("hessian").hessian_accumulate(H, X, sq)


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
    retries of :func:`ssgr.ops.obs._damped`: ``T = U^-1`` from one Cholesky, ``U`` from one
    triangular solve. Per block: the unstructured prune mask (a threshold over the whole block,
    in torch), ``block_fn(W1, U_bb, prune, n_prune, m, keep, err, losses)`` (the fused column
    loop, in place), then the trailing update ``W[:, i2:] -= Err @ U[i1:i2, i2:]`` (one GEMM).
    Returns ``(Q[r, c] fp32, keep[r, c] bool, loss, damping)``."""
    Wc, Hc = _prepare(W, H, torch.float32)
    T, damping = _damped(Hc, percdamp, _inverse_factor_flipped)
    del Hc
    rows, cols = Wc.shape
    eye = torch.eye(cols, dtype=torch.float32, device=Wc.device)
    U = torch.linalg.solve_triangular(T, eye, upper=True).contiguous()  # row-major
    del T, eye
    keep = torch.empty(rows, cols, dtype=torch.bool, device=Wc.device)
    losses = torch.zeros(rows, dtype=torch.float32, device=Wc.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = Wc[:, i1:i2]
        Ub = U[i1:i2, i1:i2]
        prune = _unstructured_prune(W1, Ub, sparsity) if n_prune == 0 else None
        kb = torch.empty(rows, count, dtype=torch.uint8, device=Wc.device)
        eb = torch.empty(rows, count, dtype=torch.float32, device=Wc.device)
        block_fn(W1, Ub, prune, n_prune, m, kb, eb, losses)
        keep[:, i1:i2] = kb.bool()
        if i2 < cols:
            Wc[:, i2:].addmm_(eb, U[i1:i2, i2:], alpha=-1)
    return Wc, keep, float(losses.sum().item()), damping


@register("sparsegpt", "triton", devices=devices, probe=probe)
def sparsegpt(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT with the fused Triton OBS block kernel (see :func:`blocked_sparsegpt`)."""
    return blocked_sparsegpt(
        W, H, sparsity, n_prune, m, blocksize, percdamp, _k("sparsegpt").obs_block
    )


def _scores(scores: torch.Tensor) -> torch.Tensor:
    return scores if scores.stride(-1) == 1 else scores.contiguous()


@register("nm_mask", "triton", devices=devices, probe=probe)
def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool: n largest of every m (ties: lower column)."""
    return _k("masks").nm_mask(_scores(scores), n, m)


@register("topk_mask", "triton", devices=devices, probe=probe)
def topk_mask(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool pruning the ``n_prune`` smallest per row or per layer."""
    s = _scores(scores)
    flat = s.reshape(1, -1) if per == "layer" else s
    return _k("masks").topk_mask(flat, n_prune).reshape(scores.shape)


def check_24(W: torch.Tensor, keep: torch.Tensor) -> None:
    """Validate a 2:4 matrix for packing: same ``[r, c]`` shapes, ``c % 8 == 0``, exactly two
    kept per group of four."""
    _checks.tensor("W", W, ndim=2)
    _checks.tensor("keep", keep, ndim=2)
    _checks.floating("W", W)
    if keep.dtype != torch.bool or keep.shape != W.shape:
        raise ValueError(
            f"keep must be a bool mask of W's shape {tuple(W.shape)}, got {keep.dtype} "
            f"{tuple(keep.shape)}"
        )
    _checks.same_device(W=W, keep=keep)
    if W.shape[1] % 8 != 0:
        raise ValueError(f"W has {W.shape[1]} columns; 2:4 packing needs a multiple of 8")
    if not bool((keep.reshape(W.shape[0], -1, 4).sum(-1) == 2).all()):
        raise ValueError("keep is not 2:4 (exactly 2 kept in every group of 4 columns)")


def pack_24(W: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a 2:4 matrix ``W[r, c]`` with its keep mask into ``(values[r, c/2], meta[r, c/8])``
    (layout in ``ssgr.kernels.masks``); ``ssgr.kernels.masks.unpack_24`` gives back the dense 2:4
    matrix for ``torch.sparse.to_sparse_semi_structured``."""
    reason = probe()
    if reason is not None:
        raise RuntimeError(f"the triton backend is unavailable: {reason}")
    if W.device.type not in devices():
        raise ValueError(f"the triton backend cannot run on {W.device.type} tensors")
    check_24(W, keep)
    return _k("masks").pack_24(W, keep)
