"""In-place LAPACK ``spotrf`` from the LAPACK that torch's CPU library bundles (MKL in the x86
wheels), called through ctypes.

``torch.linalg.cholesky`` copies its input into a new buffer, factors it and zeroes the other
triangle: two extra passes over a ``[c, c]`` matrix (about a third of the factorisation's time at
c = 4096 on two cores). The SparseGPT ``cpu`` backend factors a matrix it owns, so it calls
``spotrf`` in place instead. When the symbol is not found (another torch build) :func:`potrf_`
falls back to ``torch.linalg.cholesky``.

Integer arguments are passed as 64-bit integers: on a little-endian machine an LP64 LAPACK reads
their low 32 bits, which hold the same value, so the call is right for LP64 and ILP64 builds.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


@functools.cache
def _spotrf() -> Callable[..., None] | None:
    """``spotrf_`` from torch's bundled LAPACK, or None (not found, or a big-endian machine)."""
    if sys.byteorder != "little":
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).spotrf_
    except (OSError, AttributeError) as exc:
        log.debug("no spotrf_ in %s (%s): using torch.linalg.cholesky", path, exc)
        return None
    fn.restype = None
    return fn


def available() -> bool:
    """True when :func:`potrf_` factors in place (torch's LAPACK exports ``spotrf_``)."""
    return _spotrf() is not None


def potrf_(A: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of a symmetric positive-definite ``A[c, c]`` (float32, CPU,
    contiguous), computed in place where possible.

    Returns ``L[c, c]`` with ``A = L L^T`` in its lower triangle; its strict upper triangle is
    unspecified (it keeps A's values when factored in place). Raises
    ``torch.linalg.LinAlgError`` when A is not positive definite.
    """
    if (A.dtype != torch.float32 or A.device.type != "cpu" or not A.is_contiguous()
            or A.dim() != 2 or A.shape[0] != A.shape[1]):
        raise ValueError(
            f"potrf_ needs a contiguous square float32 CPU matrix, got {A.dtype} "
            f"{tuple(A.shape)} on {A.device} (contiguous={A.is_contiguous()})"
        )
    fn = _spotrf()
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
            f"spotrf: the leading minor of order {code} is not positive definite"
            if code > 0 else f"spotrf: argument {-code} is invalid"
        )
    return A
