"""The native CPU boundary: the extension ``ssgr._C`` (C++17/OpenMP, built from csrc/ by
setup.py) and LAPACK's in-place ``spotrf`` from torch's own library.

Every raw pointer handed to native code is taken here, and only here: each wrapper checks the
tensors' device (cpu), dtype, shape and strides first, then calls the binding with named
arguments. The C++ kernels are declared in csrc/ssgr_cpu.h (semantics, shapes, units) and bound
in csrc/bindings.cpp.

``potrf_``: ``torch.linalg.cholesky`` copies its input into a new buffer, factors it and zeroes
the other triangle, two extra passes over a ``[c, c]`` matrix (about a third of the
factorisation's time at c = 4096 on two cores). The SparseGPT ``cpu`` backend factors a matrix it
owns, so it calls LAPACK ``spotrf`` (float32) or ``dpotrf`` (float64) in place instead; where
torch's library exports no such symbol (another torch build) it falls back to
``torch.linalg.cholesky``. Integer arguments are passed as 64-bit integers: on a little-endian
machine an LP64 LAPACK reads their low 32 bits, which hold the same value, so the call is right
for LP64 and ILP64 builds.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType

import torch

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- ssgr._C loader


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from ssgr import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, (
            f"the native extension ssgr._C is not built ({exc}); run "
            "`pip install --no-build-isolation --no-deps -e .` (or `make setup`)"
        )
    return _C, None


def probe() -> str | None:
    """None when ``ssgr._C`` imports, else why not."""
    return _load()[1]


def lib() -> ModuleType:
    """The loaded ``ssgr._C`` module. Raises RuntimeError (with :func:`probe`'s reason) when it
    is not built."""
    mod, reason = _load()
    if mod is None:
        raise RuntimeError(reason)
    return mod


# ----------------------------------------------------------------------------------- checking


def _cpu_tensor(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...],
                shape: tuple[int, ...]) -> None:
    """A CPU tensor of one of ``dtypes`` and exactly ``shape`` with unit last-dim stride."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got one on {t.device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dim() > 0 and t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride along its last dimension: {t.stride()}")


def _contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {t.stride()})")


_F32 = (torch.float32,)
_MASK = (torch.uint8, torch.bool)


# ---------------------------------------------------------------------------- kernel wrappers


def obs_block(w: torch.Tensor, u: torch.Tensor, prune: torch.Tensor | None, n_prune: int, m: int,
              keep: torch.Tensor, losses: torch.Tensor, q_out: torch.Tensor,
              dflip: torch.Tensor | None) -> None:
    """One fused SparseGPT OBS block (csrc/sparsegpt.cpp ``obs_block_f32``), in place.

    Args:
        w: ``[rows, count]`` float32, unit column stride: the block's current weights (read).
        u: ``[count, count]`` float32, unit column stride: the block's diagonal block of
            ``U = chol(H^-1)^T``.
        prune: ``[rows, count]`` uint8 contiguous, 1 = prune (unstructured, ``n_prune == 0``),
            or None (N:M).
        n_prune, m: N:M mode when ``n_prune > 0``: prune ``n_prune`` of every ``m`` columns.
        keep: ``[rows, count]`` bool/uint8 out, unit column stride (a column slice of the
            whole mask): 1 = kept.
        losses: ``[rows]`` float32 contiguous, += ``sum (w - q)^2 / u_ii^2 / 2``.
        q_out: ``[rows, count]`` float32 out, unit column stride: ``Q`` (may be ``w``).
        dflip: ``[rows, count]`` float32 contiguous out (``q_out``'s values before the call
            minus Q, column-reversed), or None.
    Raises:
        ValueError / TypeError: a tensor of the wrong device, dtype, shape or strides.
    """
    rows, count = w.shape
    _cpu_tensor("w", w, _F32, (rows, count))
    _cpu_tensor("u", u, _F32, (count, count))
    _cpu_tensor("keep", keep, _MASK, (rows, count))
    _cpu_tensor("losses", losses, _F32, (rows,))
    _contiguous("losses", losses)
    _cpu_tensor("q_out", q_out, _F32, (rows, count))
    if prune is None:
        if n_prune <= 0:
            raise ValueError("obs_block: unstructured mode (n_prune == 0) needs a prune mask")
    else:
        _cpu_tensor("prune", prune, (torch.uint8,), (rows, count))
        _contiguous("prune", prune)
    if dflip is not None:
        _cpu_tensor("dflip", dflip, _F32, (rows, count))
        _contiguous("dflip", dflip)
    if n_prune > 0 and not 0 < n_prune < m:
        raise ValueError(f"obs_block: N:M needs 0 < n_prune < m, got {n_prune}:{m}")
    lib().obs_block_f32(
        w=w.data_ptr(), ldw=w.stride(0), u=u.data_ptr(), ldu=u.stride(0),
        prune=0 if prune is None else prune.data_ptr(), rows=rows, count=count,
        n_prune=n_prune, m=m, keep=keep.data_ptr(), ldk=keep.stride(0),
        losses=losses.data_ptr(), q_out=q_out.data_ptr(), ldq=q_out.stride(0),
        dflip=0 if dflip is None else dflip.data_ptr(),
    )


def block_prune_mask(w: torch.Tensor, u: torch.Tensor, k: int, out: torch.Tensor) -> None:
    """Unstructured prune mask of one OBS block (csrc/sparsegpt.cpp ``block_prune_mask_f32``):
    ``out[r, i] = 1`` where ``w^2 / u_ii^2`` <= the ``k``-th smallest of the block (0-based;
    ties prune more).

    Args:
        w: ``[rows, count]`` float32, unit column stride. u: ``[count, count]`` float32, unit
            column stride (only its diagonal is read). k: ``0 <= k < rows * count``.
        out: ``[rows, count]`` uint8 contiguous.
    Raises:
        ValueError / TypeError: wrong device, dtype, shape, strides or k.
    """
    rows, count = w.shape
    _cpu_tensor("w", w, _F32, (rows, count))
    _cpu_tensor("u", u, _F32, (count, count))
    _cpu_tensor("out", out, (torch.uint8,), (rows, count))
    _contiguous("out", out)
    if not 0 <= k < rows * count:
        raise ValueError(f"block_prune_mask: k={k} is outside [0, {rows * count})")
    lib().block_prune_mask_f32(
        w=w.data_ptr(), ldw=w.stride(0), u=u.data_ptr(), ldu=u.stride(0), rows=rows,
        count=count, k=k, prune=out.data_ptr(),
    )


def flip2d(src: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``src`` reversed along both dimensions (= ``src.flip(0, 1).to(dtype)``, bit for bit),
    computed in parallel by csrc/sparsegpt.cpp ``flip2d_f32`` / ``flip2d_f32_f64``.

    Args:
        src: ``[n, n]`` float32 contiguous CPU matrix.
        dtype: float32 or float64, the copy's dtype (float64 holds every float32 exactly).
    Returns:
        a new ``[n, n]`` contiguous matrix of ``dtype``.
    """
    n = src.shape[0] if src.dim() == 2 else -1
    _cpu_tensor("src", src, _F32, (n, n))
    _contiguous("src", src)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"flip2d writes float32 or float64, got {dtype}")
    dst = torch.empty(n, n, dtype=dtype)
    fn = lib().flip2d_f32 if dtype == torch.float32 else lib().flip2d_f32_f64
    fn(src=src.data_ptr(), n=n, dst=dst.data_ptr())
    return dst


def narrow_(A: torch.Tensor) -> torch.Tensor:
    """``A`` (``[n, n]`` float64, contiguous, CPU) rounded to float32 in its own storage
    (csrc/sparsegpt.cpp ``narrow_f64_f32_inplace``): returns an ``[n, n]`` contiguous float32
    view of A's first ``4 n^2`` bytes, equal bit for bit to ``A.to(torch.float32)`` as it was.
    A's values are destroyed; the view keeps its whole storage alive."""
    n = A.shape[0] if A.dim() == 2 else -1
    _cpu_tensor("A", A, (torch.float64,), (n, n))
    _contiguous("A", A)
    lib().narrow_f64_f32_inplace(buf=A.data_ptr(), n=n)
    return A.reshape(-1).view(torch.float32)[: n * n].view(n, n)


def _scores(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D, got shape {tuple(scores.shape)}")
    _cpu_tensor("scores", scores, (torch.float32, torch.float64), tuple(scores.shape))
    _contiguous("scores", scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M keep mask (csrc/masks.cpp): the ``n`` largest of every ``m`` consecutive scores of a
    row are kept (ties keep the lower column).

    Args:
        scores: ``[rows, cols]`` float32/float64 contiguous, ``cols % m == 0``.
    Returns:
        uint8 ``[rows, cols]``, 1 = kept.
    """
    _scores(scores)
    rows, cols = scores.shape
    if not 0 < n < m or cols % m != 0:
        raise ValueError(f"nm_mask: needs 0 < n < m and m | cols, got {n}:{m} with {cols} cols")
    keep = torch.empty(rows, cols, dtype=torch.uint8)
    lib().nm_mask(scores=scores.data_ptr(), is_double=scores.dtype == torch.float64, rows=rows,
                  cols=cols, n=n, m=m, keep=keep.data_ptr())
    return keep


def topk_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Per-row top-k keep mask (csrc/masks.cpp): the ``n_prune`` smallest scores of each row
    are pruned (ties prune the lower column first).

    Args:
        scores: ``[rows, cols]`` float32/float64 contiguous (one row for a per-layer mask).
        n_prune: ``0 <= n_prune <= cols``.
    Returns:
        uint8 ``[rows, cols]``, 1 = kept.
    """
    _scores(scores)
    rows, cols = scores.shape
    if not 0 <= n_prune <= cols:
        raise ValueError(f"topk_mask: n_prune={n_prune} is outside [0, {cols}]")
    keep = torch.empty(rows, cols, dtype=torch.uint8)
    lib().topk_mask(scores=scores.data_ptr(), is_double=scores.dtype == torch.float64,
                    rows=rows, cols=cols, n_prune=n_prune, keep=keep.data_ptr())
    return keep


# ------------------------------------------------------------------ LAPACK spotrf / dpotrf


@functools.cache
def _lapack(symbol: str) -> Callable[..., None] | None:
    """``symbol`` (``spotrf_`` or ``dpotrf_``) from torch's bundled LAPACK, or None (not found,
    or a big-endian machine)."""
    if sys.byteorder != "little":
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = getattr(ctypes.CDLL(path), symbol)
    except (OSError, AttributeError) as exc:
        log.debug("no %s in %s (%s): using torch.linalg.cholesky", symbol, path, exc)
        return None
    fn.restype = None
    return fn


def _spotrf() -> Callable[..., None] | None:
    """LAPACK ``spotrf_`` (float32 Cholesky), or None."""
    return _lapack("spotrf_")


def _dpotrf() -> Callable[..., None] | None:
    """LAPACK ``dpotrf_`` (float64 Cholesky), or None."""
    return _lapack("dpotrf_")


def _potrf_fn(dtype: torch.dtype) -> Callable[..., None] | None:
    return _spotrf() if dtype == torch.float32 else _dpotrf()


def potrf_available(dtype: torch.dtype = torch.float32) -> bool:
    """True when :func:`potrf_` factors a ``dtype`` (float32 or float64) matrix in place
    (torch's LAPACK exports ``spotrf_`` / ``dpotrf_``). Raises ValueError for another dtype."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"potrf_ factors float32 or float64 matrices, not {dtype}")
    return _potrf_fn(dtype) is not None


def potrf_(A: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of a symmetric positive-definite ``A[c, c]`` (float32 or float64,
    CPU, contiguous), computed in place where possible (LAPACK ``spotrf`` / ``dpotrf``).

    Returns ``L[c, c]`` in A's dtype with ``A = L L^T`` in its lower triangle; its strict upper
    triangle is unspecified (it keeps A's values when factored in place). Raises
    ``torch.linalg.LinAlgError`` when A is not positive definite, ValueError for another input.
    """
    if (A.dtype not in (torch.float32, torch.float64) or A.device.type != "cpu"
            or not A.is_contiguous() or A.dim() != 2 or A.shape[0] != A.shape[1]):
        raise ValueError(
            f"potrf_ needs a contiguous square float32 or float64 CPU matrix, got {A.dtype} "
            f"{tuple(A.shape)} on {A.device} (contiguous={A.is_contiguous()})"
        )
    name = "spotrf" if A.dtype == torch.float32 else "dpotrf"
    fn = _potrf_fn(A.dtype)
    if fn is None:
        return torch.linalg.cholesky(A)
    n = ctypes.c_int64(A.shape[0])
    info = ctypes.c_int64(0)
    # Row-major A is column-major A^T = A; the column-major upper factor U (A = U^T U) read
    # row-major is the lower factor L = U^T. The trailing 1 is Fortran's hidden length of "U".
    fn(ctypes.c_char_p(b"U"), ctypes.byref(n), ctypes.c_void_p(A.data_ptr()), ctypes.byref(n),
       ctypes.byref(info), ctypes.c_size_t(1))
    code = info.value & 0xFFFFFFFF  # an LP64 LAPACK wrote only the low 32 bits
    code -= (1 << 32) if code >= (1 << 31) else 0
    if code != 0:
        raise torch.linalg.LinAlgError(
            f"{name}: the leading minor of order {code} is not positive definite"
            if code > 0 else f"{name}: argument {-code} is invalid"
        )
    return A
