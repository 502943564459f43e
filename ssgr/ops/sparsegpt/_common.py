"""What every SparseGPT implementation shares: the input preparation (dead columns), the damped
factorisation with its retries, the factor's precision (:func:`factor_dtype`) and
:class:`CholeskyError`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from ssgr.errors import InputError, SSGRError

from .. import _checks

log = logging.getLogger(__name__)

#: Damping tries: ``percdamp``, then x10 each time.
MAX_DAMPING_TRIES = 4

#: Environment variable: the precision the fp32 backends (cpu, triton, cuda) compute the
#: damped Hessian's Cholesky factor (and, on a GPU, its inverse) in before rounding it to
#: float32: ``float64`` (default) or ``float32``; read at each call.
FACTOR_ENV = "SSGR_SPARSEGPT_FACTOR"
_FACTOR_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def factor_dtype() -> torch.dtype:
    """``$SSGR_SPARSEGPT_FACTOR`` as a dtype: float64 (the default) or float32. The float32
    factor is faster on CPU but flips more near-tie decisions than llm-compressor's fp32 path
    (issue #18 item 8; README "Factor precision"). Raises InputError for another value."""
    value = os.environ.get(FACTOR_ENV, "").strip().lower() or "float64"
    if value not in _FACTOR_DTYPES:
        raise InputError(
            f"{FACTOR_ENV}={os.environ[FACTOR_ENV]!r} is not a factor precision: use float64 (the "
            "default: masks match a float64 run up to rounding) or float32 (faster on CPU, more "
            "near-tie flips)"
        )
    return _FACTOR_DTYPES[value]


class CholeskyError(SSGRError, RuntimeError):
    """The damped Hessian stayed non positive-definite after every damping retry."""


def prepare(
    W: torch.Tensor, H: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` copied to ``dtype`` with dead columns (``H_ii == 0``) zeroed, and ``H`` in ``dtype``
    with ``H_ii := 1`` there (a copy only when it has to change; the caller's H is never
    modified)."""
    Wc = W.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)  # row-major
    dead = torch.diag(H) == 0
    Hc = H.to(dtype)
    if bool(dead.any()):
        Hc = Hc.clone() if Hc is H else Hc
        Hc.diagonal()[dead] = 1
        Wc[:, dead] = 0
    return Wc, Hc


def damped(
    H: torch.Tensor, percdamp: float, factor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, float]:
    """``factor(H, damp)`` with ``damp = percdamp * mean(diag H)``: the factor of ``H + damp I``
    and the fraction used. On failure (``LinAlgError`` or a non-finite diagonal) percdamp is
    multiplied by 10 and the factorisation retried, :data:`MAX_DAMPING_TRIES` times in all; a
    retry that succeeds is logged as a warning. Raises :class:`CholeskyError` after the last."""
    mean_diag = torch.mean(torch.diag(H))
    frac = percdamp
    tried = []
    for _ in range(MAX_DAMPING_TRIES):
        try:
            F = factor(H, frac * mean_diag)
            if _checks.all_finite(F.diagonal()):
                if tried:
                    log.warning(
                        "Cholesky succeeded only with damping %g (failed at %s)",
                        frac, ", ".join(f"{t:g}" for t in tried),
                    )
                return F, frac
        except torch.linalg.LinAlgError:
            pass
        tried.append(frac)
        frac *= 10
    raise CholeskyError(
        "Cholesky of the damped Hessian failed at damping "
        + ", ".join(f"{t:g}" for t in tried)
        + f" (H is {H.shape[0]}x{H.shape[0]}): it is far from positive definite. Use more "
        "calibration tokens, a larger percdamp, or check the activations for NaN/Inf."
    )

