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

The ``cpu`` backend computes the same result in another order: with ``T = J chol(J H J) J``
(J reverses the columns) one has ``T = U^-1``, so it needs one Cholesky instead of three
factorisations, and the trailing update is ``W_b += (sum_{a<b} (W_a - Q_a) T_ab) U_bb``, which
equals ``W_b -= sum_{a<b} Err_a U_ab`` (``E U = W - Q``). It never forms T: the Cholesky runs in
place on one flipped copy of H (LAPACK ``spotrf``, :mod:`._lapack`) and every product reads that
factor in flipped coordinates. The per-block column loop runs fused in C++ (csrc/obs.cpp), on
tiles of 16 rows held transposed so each step is a vector operation across rows, and the
unstructured block threshold is a radix select there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from ssgr.errors import SSGRError

from . import _checks, _cpu, _lapack, reference
from ._registry import register, resolve

log = logging.getLogger(__name__)

MAX_DAMPING_TRIES = 4


class CholeskyError(SSGRError, RuntimeError):
    """The damped Hessian stayed non positive-definite after every damping retry."""


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


def _prepare(W: torch.Tensor, H: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
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


def _damped(
    H: torch.Tensor, percdamp: float, factor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, float]:
    """``factor(H, damp)`` with ``damp = percdamp * mean(diag H)``: the factor of ``H + damp I``;
    on failure percdamp is multiplied by 10 and the factorisation retried."""
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


def _reference_factor(H: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    Hd = H.clone()
    Hd.diagonal().add_(damp)
    return reference.inverse_hessian_factor(Hd)


def _sparsegpt_reference(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    dtype = torch.float64 if torch.float64 in (W.dtype, H.dtype) else torch.float32
    Wc, Hc = _prepare(W, H, dtype)
    U, damping = _damped(Hc, percdamp, _reference_factor)
    Q, keep, loss = reference.sparsegpt_blocks(
        Wc, U, sparsity=sparsity, n_prune=n_prune, m=m, blocksize=blocksize
    )
    return Q, keep, loss, damping


def _inverse_factor_flipped(H: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    """``T[c, c]`` upper triangular with ``T = U^-1`` (U = upper Cholesky of ``(H + damp I)^-1``):
    ``H + damp I = T T^T``, i.e. ``T = J chol(J (H + damp I) J) J``."""
    Hf = H.flip(0, 1)  # a copy; damping the diagonal commutes with the flip
    Hf.diagonal().add_(damp)
    L = torch.linalg.cholesky(Hf)
    del Hf
    return L.flip(0, 1)


def _unstructured_prune(W1: torch.Tensor, Ubb: torch.Tensor, sparsity: float) -> torch.Tensor:
    """uint8 ``[r, b]`` prune mask of one block for the triton backend: every ``w^2 / U_ii^2`` <=
    the ``int(numel * sparsity)``-th smallest (0-based; ties prune more), as the reference's
    sort, found with ``kthvalue`` (the cpu backend applies the same rule by a radix select,
    ``block_prune_mask_f32`` in csrc/obs.cpp)."""
    tmp = W1**2 / (torch.diag(Ubb).reshape((1, -1))) ** 2
    k = int(tmp.numel() * sparsity)
    thresh = torch.kthvalue(tmp.flatten(), k + 1).values
    return (tmp <= thresh).to(torch.uint8).contiguous()


def _flipped_cholesky(H: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    """``L[c, c]`` lower with ``J (H + damp I) J = L L^T`` (J reverses the order), so that
    ``T = J L J = U^-1``. Factored in place in one flipped copy of H (:func:`_lapack.potrf_`);
    L's strict upper triangle is unspecified."""
    c = H.shape[0]
    Hf = torch.empty(c, c, dtype=torch.float32)  # the one copy; damping commutes with the flip
    _cpu.lib().flip2d_f32(H.data_ptr(), c, Hf.data_ptr())
    Hf.diagonal().add_(damp)
    return _lapack.potrf_(Hf)


def _sparsegpt_cpu(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The cpu backend, in flipped coordinates: ``T = J L J`` is never formed. With
    ``f1, f2 = c - i2, c - i1`` for block ``[i1, i2)``: ``T_bb = J L[f1:f2, f1:f2] J``,
    ``T[i1:i2, i2:] = J L[f1:f2, :f1] J``, and the accumulator is kept column-reversed
    (``accf[:, c - 1 - j] = sum_{a} (W_a - Q_a) T_aj``), so every product reads L in place."""
    lib = _cpu.lib()
    Wc, Hc = _prepare(W, H, torch.float32)
    L, damping = _damped(Hc.contiguous(), percdamp, _flipped_cholesky)
    del Hc
    rows, cols = Wc.shape
    keep = torch.empty(rows, cols, dtype=torch.bool)
    losses = torch.zeros(rows, dtype=torch.float32)
    # the first block's product overwrites accf (beta=0), so no memset
    accf = torch.empty_like(Wc) if cols > blocksize else None
    prune_blk = torch.empty(rows, blocksize, dtype=torch.uint8) if n_prune == 0 else None
    # (W_b - Q_b) J of one block for the trailing update, and the block's updated weights W1:
    # neither is needed when the first block is the last
    dflip = torch.empty(rows, blocksize, dtype=torch.float32) if cols > blocksize else None
    w1buf = torch.empty(rows, blocksize, dtype=torch.float32) if cols > blocksize else None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        f1, f2 = cols - i2, cols - i1
        eye = torch.eye(count, dtype=torch.float32)
        Linv = torch.linalg.solve_triangular(L[f1:f2, f1:f2].tril(), eye, upper=False)
        Ubb = Linv.flip(0, 1).contiguous()  # U_bb = T_bb^-1 = J L_bb^-1 J
        Wb = Wc[:, i1:i2]
        # acc_b U_bb = (accf_b J)(J Linv J) = accf_b (Linv J)
        if i1 == 0:
            W1 = Wb
        else:  # into the reused buffer where the block is full (only the last can be partial)
            W1 = torch.addmm(Wb, accf[:, f1:f2], Linv.flip(1),
                             out=w1buf if count == blocksize else None)
        prune_ptr = 0
        if n_prune == 0:
            pb = prune_blk if count == blocksize else torch.empty(rows, count, dtype=torch.uint8)
            k = int(rows * count * sparsity)  # llm-compressor's per-block count (k+1 tie rule)
            lib.block_prune_mask_f32(W1.data_ptr(), W1.stride(0), Ubb.data_ptr(), count, rows,
                                     count, k, pb.data_ptr())
            prune_ptr = pb.data_ptr()
        last = i2 == cols  # only the last block can be partial
        # Q goes into W's block, whose original values give D J = (W_b - Q_b) J; keep goes into
        # the bool mask (one byte, 0/1)
        lib.obs_block_f32(
            W1.data_ptr(), W1.stride(0), Ubb.data_ptr(), count, prune_ptr, rows, count, n_prune,
            m, keep[:, i1:].data_ptr(), cols, losses.data_ptr(), Wb.data_ptr(), cols,
            0 if last else dflip.data_ptr(),
        )
        if not last:
            # acc[:, i2:] += D T[i1:i2, i2:]  <=>  accf[:, :f1] += (D J) L[f1:f2, :f1]
            accf[:, :f1].addmm_(dflip, L[f1:f2, :f1], beta=0 if i1 == 0 else 1)
    return Wc, keep, float(losses.sum().item()), damping


register("sparsegpt", "reference", devices=("cpu", "cuda"))(_sparsegpt_reference)
register("sparsegpt", "cpu", devices=("cpu",), probe=_cpu.probe)(_sparsegpt_cpu)


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
        W: ``[r, c]`` weights, any float dtype (computed in fp32; fp64 if W or H is fp64).
        H: ``[c, c]`` float32 Hessian (``X^T X``, any positive scale); not modified.
        sparsity: unstructured fraction removed, in [0, 1) (per block of ``blocksize`` columns).
        n, m: N:M pattern instead of ``sparsity``: keep n of every m consecutive inputs.
        blocksize: columns per OBS block (a multiple of m for N:M).
        percdamp: damping as a fraction of ``mean(diag H)`` (> 0).
        backend: force a backend (see ``ssgr info``); None dispatches by device.
    Returns:
        :class:`SparseGPTResult` ``(weight [r, c] in W's dtype, mask [r, c] bool, loss, damping)``.
    """
    _checks.tensor("W", W, ndim=2)
    _checks.tensor("H", H, ndim=2)
    _checks.floating("W", W)
    if H.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"H has dtype {H.dtype}; pass the Hessian in float32 (H.float())")
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(
            f"H has shape {tuple(H.shape)} but W is {tuple(W.shape)}: H must be [c, c] = "
            f"[{cols}, {cols}] (the Hessian of this module's input)"
        )
    _checks.same_device(W=W, H=H)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
        raise ValueError(f"percdamp must be a float > 0 (0.01 is the usual value), got {percdamp!r}")
    nm_given = n != 0 or m != 0
    if sparsity is None and not nm_given:
        raise ValueError("give either sparsity= (unstructured) or n=, m= (N:M), e.g. n=2, m=4")
    if sparsity is not None and nm_given:
        raise ValueError(f"give sparsity= or n=, m=, not both (got sparsity={sparsity}, {n}:{m})")
    if nm_given:
        n, m = _checks.nm_pattern(n, m, cols, what="W")
        if blocksize % m != 0:
            raise ValueError(
                f"blocksize={blocksize} is not a multiple of m={m}: N:M groups would straddle "
                f"OBS blocks; use e.g. blocksize={max(m, blocksize // m * m)}"
            )
        n_prune, sparsity_f = m - n, 0.0
    else:
        sparsity_f, n_prune, m = _checks.sparsity_value("sparsity", sparsity), 0, 0
    _checks.finite("W", W, "the weights are corrupt; reload the model")
    _checks.finite("H", H, "the calibration activations had NaN/Inf")
    _, fn = resolve("sparsegpt", W.device, backend)
    Q, keep, loss, damping = fn(W, H, sparsity_f, n_prune, m, blocksize, float(percdamp))
    return SparseGPTResult(Q.to(W.dtype), keep, loss, damping)
