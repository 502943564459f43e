"""The ``cpu`` backend of ``sparsegpt``: the host loop around the fused C++ OBS block
(csrc/sparsegpt.cpp, through the typed wrappers of :mod:`ssgr.ops._native`).

It computes the reference's result in another order: with ``T = J chol(J H J) J`` (J reverses the
columns) one has ``T = U^-1``, so it needs one Cholesky instead of three factorisations, and the
trailing update is ``W_b += (sum_{a<b} (W_a - Q_a) T_ab) U_bb``, which equals
``W_b -= sum_{a<b} Err_a U_ab`` (``E U = W - Q``). It never forms T: the Cholesky runs in place on
one flipped copy of H (:func:`ssgr.ops._native.potrf_`) and every product reads that factor in
flipped coordinates. The per-block column loop runs fused in C++, on tiles of 16
rows held transposed so each step is a vector operation across rows, and the unstructured block
threshold is a radix select there too.

The factor is computed in float64 (LAPACK ``dpotrf`` on a float64 copy of the flipped H) and
rounded to float32 for the fp32 loop; ``SSGR_SPARSEGPT_FACTOR=float32`` factors in float32
(``spotrf``) instead (:func:`ssgr.ops.sparsegpt._common.factor_dtype`). Why (issue #18 item
8): decisions at near-ties depend on the last rows of L (the first columns of W) being the
rounding of the exact factor. Over SmolLM2-135M (``benchmarks/make_real_fixture.py
--measure-model``) the float32 factor flipped more near-ties than llm-compressor's fp32 path
(three fp32 factorisations), the float64 one far fewer; no cheaper variant tried did (float64
diagonal blocks, float64 only for the last half of L's rows computed from a float32 leading
block, a blocked factor with float64 Schur complements of float32 panels). The price is the
factor's time (``dpotrf`` runs at half ``spotrf``'s rate on the 2-core AMD EPYC it was measured
on) and a ``[c, c]`` float64 buffer: ``python benchmarks/factor_precision.py`` gives the paired
speed against llm-compressor for both (README, "Factor precision").
"""

from __future__ import annotations

import functools

import torch

from .. import _native
from .._precision import ieee_fp32
from .._registry import register
from ._common import damped, factor_dtype, prepare


def cpu_supports(*, dtype: torch.dtype | None = None, H_dtype: torch.dtype | None = None,
                 **_: object) -> str | None:
    """None when the cpu backend takes the call: it computes in float32, so a float64 W or H
    (whose contract is a float64 computation) is left to the reference."""
    if torch.float64 in (dtype, H_dtype):
        return ("it computes in float32; a float64 W or H is computed in float64 by the "
                "reference")
    return None


def _flipped_cholesky(H: torch.Tensor, damp: torch.Tensor,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``L[c, c]`` float32 lower with ``J (H + damp I) J = L L^T`` (J reverses the order), so
    that ``T = J L J = U^-1``. ``H[c, c]``: float32, contiguous; ``damp``: scalar tensor.
    ``dtype`` float32 factors in place in one flipped copy of H (LAPACK ``spotrf``); float64
    factors a float64 copy (``dpotrf``) and rounds L to float32 in that copy's storage
    (extra memory: ``8 c^2`` bytes, ``4 c^2`` for float32). L's strict upper triangle is
    unspecified (:func:`ssgr.ops._native.potrf_`). Raises ``torch.linalg.LinAlgError`` when the
    damped H is not positive definite."""
    Hf = _native.flip2d(H, dtype)  # the one copy; damping commutes with the flip
    Hf.diagonal().add_(damp.to(dtype))
    L = _native.potrf_(Hf)
    if dtype == torch.float32:
        return L
    # in place unless torch's LAPACK lacks dpotrf_ (then L is a new, column-major tensor)
    return _native.narrow_(L) if L.data_ptr() == Hf.data_ptr() else L.to(torch.float32)


@register("sparsegpt", "cpu", devices=("cpu",), probe=_native.probe, supports=cpu_supports,
          limits="float32 computation with a float64 Cholesky factor (SSGR_SPARSEGPT_FACTOR="
                 "float32: a float32 one): no float64 W/H (reference)")
def sparsegpt(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT in flipped coordinates: ``T = J L J`` is never formed. With
    ``f1, f2 = c - i2, c - i1`` for block ``[i1, i2)``: ``T_bb = J L[f1:f2, f1:f2] J``,
    ``T[i1:i2, i2:] = J L[f1:f2, :f1] J``, and the accumulator is kept column-reversed
    (``accf[:, c - 1 - j] = sum_{a} (W_a - Q_a) T_aj``), so every product reads L in place.
    The torch GEMMs run in IEEE float32 whatever the global matmul precision
    (:func:`ssgr.ops._precision.ieee_fp32`). Returns ``(Q[r, c] fp32, keep[r, c] bool, loss,
    damping)``."""
    with ieee_fp32():
        return _flipped_sparsegpt(W, H, sparsity, n_prune, m, blocksize, percdamp)


def _flipped_sparsegpt(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    Wc, Hc = prepare(W, H, torch.float32)
    factor = functools.partial(_flipped_cholesky, dtype=factor_dtype())
    L, damping = damped(Hc.contiguous(), percdamp, factor)
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
        full = count == blocksize  # only the last block can be partial
        f1, f2 = cols - i2, cols - i1
        eye = torch.eye(count, dtype=torch.float32)
        Linv = torch.linalg.solve_triangular(L[f1:f2, f1:f2].tril(), eye, upper=False)
        Ubb = Linv.flip(0, 1).contiguous()  # U_bb = T_bb^-1 = J L_bb^-1 J
        Wb = Wc[:, i1:i2]
        # acc_b U_bb = (accf_b J)(J Linv J) = accf_b (Linv J)
        if i1 == 0:
            W1 = Wb
        else:  # into the reused buffer where the block is full
            W1 = torch.addmm(Wb, accf[:, f1:f2], Linv.flip(1), out=w1buf if full else None)
        prune = None
        if n_prune == 0:
            prune = prune_blk if full else torch.empty(rows, count, dtype=torch.uint8)
            k = int(rows * count * sparsity)  # llm-compressor's per-block count (k+1 tie rule)
            if k == 0:  # the block's share rounds to no weight: prune none
                prune.zero_()
            else:
                _native.block_prune_mask(W1, Ubb, k, prune)
        last = i2 == cols
        # Q goes into W's block, whose original values give D J = (W_b - Q_b) J; keep goes into
        # the bool mask (one byte, 0/1)
        dflip_b = None if last else dflip
        _native.obs_block(W1, Ubb, prune, n_prune, m, keep[:, i1:i2], losses, Wb, dflip_b)
        if not last:
            # acc[:, i2:] += D T[i1:i2, i2:]  <=>  accf[:, :f1] += (D J) L[f1:f2, :f1]
            accf[:, :f1].addmm_(dflip, L[f1:f2, :f1], beta=0 if i1 == 0 else 1)
    return Wc, keep, float(losses.sum().item()), damping
