"""Triton fused SparseGPT OBS block: the per-column mask / error / update loop of one block.

One program owns ``BR`` rows of one block of ``count <= BC`` columns. It holds its rows of the
block ``W1[BR, BC]`` in registers (fp32) and reads the block's rows of ``U`` (the upper Cholesky
factor of the damped ``H^-1``, ``U[count, count]``, L1/L2-resident: every program reads the same
block) while it runs, for each column ``i``:

* N:M (``NM``): at every m-th column, prune the ``n_prune`` smallest of the group's
  ``w^2 / U_jj^2`` (the already-updated weights; ties prune the lower column first);
  unstructured: the block's prune mask comes in (a threshold over all rows of the block, chosen
  in torch before the kernel);
* ``q = 0 if pruned else w``, ``err = (w - q) / U_ii``, ``loss += (w - q)^2 / U_ii^2``,
  ``W1[:, j] -= err * U[i, j]`` for ``j > i``.

No FMA contraction (``enable_fp_fusion=False``): each update rounds like the reference's
multiply then subtract. Divisions are ``tl.math.div_rn`` (IEEE round-to-nearest, like
``__fdiv_rn`` in the CUDA twin ``csrc/sparsegpt.cu``): Triton lowers ``/`` on fp32 to an approximate
division (``div.full.f32``). It writes the pruned block ``Q`` over ``W1``, the keep mask,
``Err[rows, count]`` and adds
``loss / 2`` per row. The trailing update ``W[:, i2:] -= Err @ U[i1:i2, i2:]`` is one GEMM, done by
the caller (:func:`ssgr.ops.sparsegpt.gpu.sparsegpt_triton`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["obs_block", "gpu_config", "interpreting"]


def interpreting() -> bool:
    """True when triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _obs_block_kernel(
    w_ptr, stride_w, u_ptr, stride_u, prune_ptr, keep_ptr, err_ptr, loss_ptr,
    rows, count, n_prune,
    M: tl.constexpr, NM: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
):
    pid = tl.program_id(0)
    r = pid * BR + tl.arange(0, BR)
    rm = r < rows
    col = tl.arange(0, BC)
    cm = col < count
    m2 = rm[:, None] & cm[None, :]
    r64 = r.to(tl.int64)
    W = tl.load(w_ptr + r64[:, None] * stride_w + col[None, :], mask=m2, other=0.0).to(tl.float32)
    diag = tl.load(u_ptr + col * stride_u + col, mask=cm, other=1.0).to(tl.float32)
    d2 = diag * diag
    if NM:
        P = tl.zeros((BR, BC), dtype=tl.int32)
    else:
        P = tl.load(prune_ptr + r64[:, None] * count + col[None, :], mask=m2, other=0).to(tl.int32)
    E = tl.zeros((BR, BC), dtype=tl.float32)
    loss = tl.zeros((BR,), dtype=tl.float32)
    for i in range(count):
        if NM:
            if i % M == 0:
                S = tl.math.div_rn(W * W, d2[None, :])
                grp = (col >= i) & (col < i + M) & cm
                rank = tl.zeros((BR, BC), dtype=tl.int32)
                for k in tl.static_range(M):
                    ck = i + k
                    sk = tl.sum(tl.where(col[None, :] == ck, S, 0.0), axis=1)[:, None]
                    before = (sk < S) | ((sk == S) & (ck < col[None, :]))
                    rank += (before & (ck < count)).to(tl.int32)
                P = tl.where(grp[None, :], (rank < n_prune).to(tl.int32), P)
        sel = col[None, :] == i
        w = tl.sum(tl.where(sel, W, 0.0), axis=1)
        p = tl.sum(tl.where(sel, P, 0), axis=1)
        d = tl.load(u_ptr + i * stride_u + i).to(tl.float32)
        q = tl.where(p != 0, 0.0, w)
        diff = w - q
        loss += tl.math.div_rn(diff * diff, d * d)
        e = tl.math.div_rn(diff, d)
        urow = tl.load(u_ptr + i * stride_u + col, mask=cm & (col > i), other=0.0).to(tl.float32)
        W = tl.where(col[None, :] > i, W - e[:, None] * urow[None, :], W)
        W = tl.where(sel, q[:, None], W)
        E = tl.where(sel, e[:, None], E)
    tl.store(w_ptr + r64[:, None] * stride_w + col[None, :], W, mask=m2)
    tl.store(keep_ptr + r64[:, None] * count + col[None, :], (P == 0).to(tl.uint8), mask=m2)
    tl.store(err_ptr + r64[:, None] * count + col[None, :], E, mask=m2)
    acc = tl.load(loss_ptr + r, mask=rm, other=0.0)
    tl.store(loss_ptr + r, acc + tl.math.div_rn(loss, 2.0), mask=rm)


def gpu_config(count: int) -> dict[str, int | bool]:
    """Launch configuration of :func:`obs_block` on a GPU for a block of ``count`` columns:
    ``BC`` (columns held, a power of two >= 16), ``BR`` (rows per program), warps, and no FMA
    contraction. The one place the launcher and ``benchmarks/sm90_static.py`` read it from."""
    bc = max(16, triton.next_power_of_2(count))
    return dict(BR=16 if bc <= 128 else 8, BC=bc, num_warps=4, enable_fp_fusion=False)


def obs_block(
    W1: torch.Tensor,
    U: torch.Tensor,
    prune: torch.Tensor | None,
    n_prune: int,
    m: int,
    keep: torch.Tensor,
    err: torch.Tensor,
    losses: torch.Tensor,
) -> None:
    """Run one fused OBS block in place.

    Args:
        W1: ``[rows, count]`` float32 view (unit column stride) of the block's updated weights;
            overwritten with the pruned block ``Q``.
        U: ``[count, count]`` float32 view (unit column stride): the block's diagonal block of U.
        prune: ``[rows, count]`` uint8 contiguous prune mask (unstructured) or None (N:M).
        n_prune, m: N:M pattern as ``(m - n, m)``; ``(0, 0)`` for unstructured.
        keep: ``[rows, count]`` uint8 contiguous output (1 = kept).
        err: ``[rows, count]`` float32 contiguous output ``(w - q) / U_ii``.
        losses: ``[rows]`` float32; ``sum_i (w - q)^2 / U_ii^2 / 2`` is added.
    """
    rows, count = W1.shape
    if rows == 0 or count == 0:
        return
    if W1.stride(1) != 1 or U.stride(1) != 1:
        raise ValueError("obs_block needs unit column strides for W1 and U")
    nm = n_prune > 0
    if nm == (prune is not None):
        raise ValueError("give a prune mask for unstructured blocks and none for N:M")
    if interpreting():
        cfg = dict(BR=max(16, min(64, triton.next_power_of_2(rows))),
                   BC=max(16, triton.next_power_of_2(count)), num_warps=4)
    else:
        cfg = gpu_config(count)
    grid = (triton.cdiv(rows, cfg["BR"]),)
    _obs_block_kernel[grid](
        W1, W1.stride(0), U, U.stride(0), prune if prune is not None else keep, keep, err, losses,
        rows, count, n_prune, M=max(m, 1), NM=nm, **cfg,
    )
