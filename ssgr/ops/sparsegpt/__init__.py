"""SparseGPT (blocked Cholesky OBS) pruning of one weight matrix.

Semantics are llm-compressor 0.14 ``sparsify_weight`` (= IST-DASLab ``fasterprune``): dead
columns (``H_ii == 0``) are zeroed with ``H_ii := 1``; damping ``percdamp * mean(diag H)``;
``U`` = upper Cholesky of ``H^-1``; blocks of ``blocksize`` columns; unstructured masks chosen per
block (``w^2 / U_ii^2 <=`` the ``int(numel * sparsity)``-th smallest, 0-based, so ties can prune
more); N:M chosen every m columns from the already-updated weights; per-column OBS update inside a
block and a lazy trailing update. ``n`` is the number *kept* per group (llm-compressor's
``prune_n`` is the number pruned: ``prune_n = m - n``; for 2:4 and 4:8 the two agree).

If the Cholesky fails the damping fraction is multiplied by 10 and retried (up to
:data:`MAX_DAMPING_TRIES` tries); the fraction used is returned; after the last try a
:class:`CholeskyError` is raised. There is no fallback to the identity.

Implementations, one file each: ``reference.py`` (pure torch, the oracle), ``cpu.py`` (the host
loop of the fused C++ OBS block, csrc/sparsegpt.cpp), ``gpu.py`` (one host loop for the
``triton`` and ``cuda`` OBS block kernels); ``_common.py`` holds what they share (dead columns,
damping retries). "OBS" names the per-block kernel; the op is SparseGPT everywhere else.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from ssgr.errors import InputError

from .. import _checks
from .._registry import resolve
from ._common import MAX_DAMPING_TRIES, CholeskyError, factor_dtype

log = logging.getLogger(__name__)

__all__ = [
    "MAX_DAMPING_TRIES", "CholeskyError", "SparseGPTResult", "sparsegpt_call", "sparsegpt_prune",
]


class SparseGPTResult(NamedTuple):
    """Result of :func:`sparsegpt_prune`.

    weight: ``[r, c]`` pruned and compensated weights in W's dtype.
    mask: ``[r, c]`` bool, True where a weight is kept.
    loss: sum over rows and columns of ``(w - q)^2 / U_ii^2 / 2`` (llm-compressor's loss).
    damping: the damping fraction actually used (``percdamp``, or larger after retries).
    """

    weight: torch.Tensor
    mask: torch.Tensor
    loss: float
    damping: float


def sparsegpt_call(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    sparsity: float | None = None,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
) -> dict:
    """The properties of a :func:`sparsegpt_prune` call that dispatch checks against each
    implementation's ``supports`` (:func:`ssgr.ops._registry.resolve`): ``dtype`` (W's),
    ``H_dtype``, ``rows``, ``cols``, ``blocksize``, ``n``, ``m`` (kept per group and group
    width; ``0, 0`` for unstructured). ``sparsity`` is accepted so that a pattern's keyword
    arguments can be passed as they are; it does not change dispatch."""
    return dict(dtype=W.dtype, H_dtype=H.dtype, rows=W.shape[0], cols=W.shape[1],
                blocksize=blocksize, n=n, m=m)


def _warn_dead_inputs(H: torch.Tensor, cols: int, target: float) -> None:
    """One WARNING when more input columns never fired (``H_ii == 0``, zeroed by SparseGPT's
    dead-column rule) than the pattern prunes: the result is then sparser than asked (100% for
    an all-zero H, e.g. an expert no calibration token reached). The streaming engine flags such
    a module in its report; this covers direct callers."""
    dead = int((H.diagonal() == 0).sum())
    if dead and dead / cols > target:
        log.warning(
            "sparsegpt_prune: %d of %d input columns never fired (H_ii == 0) and are zeroed, more "
            "than the %.0f%% the pattern prunes: the result is sparser than asked (all zero if "
            "H is). Calibrate with tokens that reach this module.", dead, cols, 100 * target,
        )


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    sparsity: float | None = None,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    backend: str | None = None,
) -> SparseGPTResult:
    """Prune ``W`` with SparseGPT given the layer-input Hessian ``H``.

    Args:
        W: ``[r, c]`` weights, any float dtype (computed in fp32; in fp64 if W or H is fp64:
            automatic dispatch sends those to an implementation that computes in fp64, the
            reference, and a forced backend that computes in fp32 raises BackendError).
        H: ``[c, c]`` float32 Hessian (``X^T X``, any positive scale); not modified.
        sparsity: unstructured fraction removed, in [0, 1) (per block of ``blocksize`` columns:
            ``k = int(block numel * sparsity)``; llm-compressor's rule then prunes every weight
            at or below the (k+1)-th smallest score, except that a block whose k is 0 prunes
            nothing, and ``sparsity=0`` returns W unchanged: mask all True, loss 0, damping 0).
        n, m: N:M pattern instead of ``sparsity``: keep n of every m consecutive inputs.
        blocksize: columns per OBS block (a multiple of m for N:M).
        percdamp: damping as a fraction of ``mean(diag H)`` (> 0).
        backend: force a backend (see ``ssgr info``); None dispatches by device. The fp32
            backends (cpu, triton, cuda) compute H's Cholesky factor in float64;
            ``SSGR_SPARSEGPT_FACTOR=float32`` computes it in fp32 (faster on CPU, more near-tie
            flips; README "Factor precision").
    Returns:
        :class:`SparseGPTResult` ``(weight [r, c] in W's dtype, mask [r, c] bool, loss, damping)``.
    Raises:
        InputError: bad shapes, dtypes, devices, pattern or NaN/Inf in W or H; a
            ``SSGR_SPARSEGPT_FACTOR`` other than float64 or float32.
        CholeskyError: H stays non positive-definite after every damping retry.
        BackendError: a forced backend that cannot run here or cannot take this call (a float64
            W or H, a blocksize or N:M group wider than its kernel takes; ``ssgr info`` lists
            each backend's limits).
    """
    _checks.tensor("W", W, ndim=2)
    _checks.tensor("H", H, ndim=2)
    _checks.floating("W", W)
    if H.dtype not in (torch.float32, torch.float64):
        raise InputError(f"H has dtype {H.dtype}; pass the Hessian in float32 (H.float())")
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise InputError(
            f"H has shape {tuple(H.shape)} but W is {tuple(W.shape)}: H must be [c, c] = "
            f"[{cols}, {cols}] (the Hessian of this module's input)"
        )
    _checks.same_device(W=W, H=H)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise InputError(f"blocksize must be a positive int, got {blocksize!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
        raise InputError(
            f"percdamp must be a float > 0 (0.01 is the usual value), got {percdamp!r}"
        )
    nm_given = n != 0 or m != 0
    if sparsity is None and not nm_given:
        raise InputError("give either sparsity= (unstructured) or n=, m= (N:M), e.g. n=2, m=4")
    if sparsity is not None and nm_given:
        raise InputError(f"give sparsity= or n=, m=, not both (got sparsity={sparsity}, {n}:{m})")
    if nm_given:
        n, m = _checks.nm_pattern(n, m, cols, what="W")
        if blocksize % m != 0:
            raise InputError(
                f"blocksize={blocksize} is not a multiple of m={m}: N:M groups would straddle "
                f"OBS blocks; use e.g. blocksize={max(m, blocksize // m * m)}"
            )
        n_prune, sparsity_f = m - n, 0.0
    else:
        sparsity_f, n_prune, m = _checks.sparsity_value("sparsity", sparsity), 0, 0
    _checks.finite("W", W, "the weights are corrupt; reload the model")
    _checks.finite("H", H, "the calibration activations had NaN/Inf")
    _warn_dead_inputs(H, cols, sparsity_f if n_prune == 0 else n_prune / m)
    factor_dtype()  # a bad SSGR_SPARSEGPT_FACTOR is the caller's error, raised before dispatch
    call = sparsegpt_call(W, H, n=m - n_prune if m else 0, m=m, blocksize=blocksize)
    _, fn = resolve("sparsegpt", W.device, backend, **call)
    if n_prune == 0 and sparsity_f == 0.0:
        # a dense baseline: nothing is pruned, so nothing is compensated (dead columns included)
        return SparseGPTResult(W.clone(), torch.ones_like(W, dtype=torch.bool), 0.0, 0.0)
    Q, keep, loss, damping = fn(W, H, sparsity_f, n_prune, m, blocksize, float(percdamp))
    return SparseGPTResult(Q.to(W.dtype), keep, loss, damping)
