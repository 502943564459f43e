"""Triton mask kernels: N:M keep masks, unstructured top-k (per row or per layer).

Contracts (same as :mod:`ssgr.ops.masks.reference`):

* ``nm_mask(scores[r, c], n, m) -> keep[r, c] bool``: the n largest of every m consecutive scores
  of a row; ties keep the lower column (a stable descending sort).
* ``topk_mask(scores[R, L], n_prune) -> keep[R, L] bool``: the ``n_prune`` smallest of each row
  pruned; ties prune the lower index first (a stable ascending sort). Per layer is one row of
  ``r * c``.

A pruned 2:4 matrix needs no packing of ours: ``torch.sparse.to_sparse_semi_structured`` takes
the dense matrix (zeros where pruned) directly.

bf16/fp16 scores are upcast to fp32 right after ``tl.load`` (exact, and the interpreter's bf16 is
wrong); fp64 scores stay fp64. Top-k finds each row's threshold by a radix select on
order-preserving integer keys (one bit per pass, counts reduced in a fixed order: deterministic),
then resolves ties by index with a prefix count.

Importing this module imports triton; run it with ``TRITON_INTERPRET=1`` set before that import to
execute on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["interpreting", "nm_mask", "topk_mask"]


def interpreting() -> bool:
    """True when triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(1, n))))


# ----------------------------------------------------------------------------------------------
# N:M
# ----------------------------------------------------------------------------------------------


@triton.jit
def _nm_mask_kernel(
    s_ptr, keep_ptr, n_groups, groups_per_row, stride_r,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BQ: tl.constexpr,
):
    """One program: BQ groups of M scores (flattened over rows). keep = rank < N where rank counts
    larger scores plus equal scores at lower columns."""
    pid = tl.program_id(0)
    q = pid * BQ + tl.arange(0, BQ)  # [BQ] group ids
    j = tl.arange(0, MP)  # [MP] position in the group
    qm = q < n_groups
    row = q // groups_per_row
    col0 = (q % groups_per_row) * M
    base = row.to(tl.int64) * stride_r + col0
    valid = qm[:, None] & (j[None, :] < M)
    x = tl.load(s_ptr + base[:, None] + j[None, :], mask=valid, other=0.0)
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    rank = tl.zeros((BQ, MP), dtype=tl.int32)
    for k in tl.static_range(M):
        sk = tl.load(s_ptr + base + k, mask=qm, other=0.0)
        if sk.dtype != tl.float64:
            sk = sk.to(tl.float32)
        sk = sk[:, None]
        beats = (sk > x) | ((sk == x) & (k < j[None, :]))
        rank += beats.to(tl.int32)
    keep = (rank < N).to(tl.uint8)
    out = row.to(tl.int64) * (groups_per_row * M) + col0
    tl.store(keep_ptr + out[:, None] + j[None, :], keep, mask=valid)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` bool: n largest of every m along each row (ties: lower column)."""
    r, c = scores.shape
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    keep = torch.empty(r, c, dtype=torch.uint8, device=scores.device)
    gpr = c // m
    n_groups = r * gpr
    if n_groups == 0:
        return keep.bool()
    mp = triton.next_power_of_2(m)
    bq = max(1, min(1024 if not interpreting() else 64, 4096 // mp))
    bq = triton.next_power_of_2(bq)
    grid = (triton.cdiv(n_groups, bq),)
    _nm_mask_kernel[grid](
        scores, keep, n_groups, gpr, scores.stride(0), N=n, M=m, MP=mp, BQ=bq,
        num_warps=4,
    )
    return keep.view(torch.bool)


# ----------------------------------------------------------------------------------------------
# top-k (radix select on order-preserving integer keys)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _sort_key(x, IS64: tl.constexpr):
    """Signed integer key with the order of the float x (-0.0 mapped to +0.0 first)."""
    x = x + 0.0
    if IS64:
        b = x.to(tl.int64, bitcast=True)
        return tl.where(b < 0, b ^ 0x7FFFFFFFFFFFFFFF, b)
    else:
        b = x.to(tl.int32, bitcast=True)
        return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _load_key(s_ptr, offs, msk, IS64: tl.constexpr):
    x = tl.load(s_ptr + offs, mask=msk, other=0.0)
    if IS64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    return _sort_key(x, IS64)


@triton.jit
def _count_kernel(
    s_ptr, ref_ptr, cnt_ptr, L, stride_r, n_chunks,
    IS64: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr, EQUAL: tl.constexpr,
):
    """cnt[row, p] = #{keys < ref[row]} (or ``== ref[row]`` with EQUAL) in chunk range p."""
    row = tl.program_id(0)
    p = tl.program_id(1)
    ref = tl.load(ref_ptr + row)
    base = row.to(tl.int64) * stride_r
    total = tl.zeros((BLOCK,), dtype=tl.int32)
    for ci in range(CHUNKS):
        offs = (p * CHUNKS + ci).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        msk = offs < L
        key = _load_key(s_ptr, base + offs, msk, IS64)
        hit = (key == ref) if EQUAL else (key < ref)
        total += (hit & msk).to(tl.int32)
    tl.store(cnt_ptr + row * n_chunks + p, tl.sum(total, axis=0))


@triton.jit
def _apply_topk_kernel(
    s_ptr, thr_ptr, tie_before_ptr, tie_quota_ptr, keep_ptr, L, stride_r, n_chunks,
    IS64: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr,
):
    """keep = key > thr, or key == thr beyond the first ``quota`` ties of the row (in index
    order); ``tie_before[row, p]`` = ties of the row in chunk ranges before p."""
    row = tl.program_id(0)
    p = tl.program_id(1)
    thr = tl.load(thr_ptr + row)
    quota = tl.load(tie_quota_ptr + row)
    seen = tl.load(tie_before_ptr + row * n_chunks + p)
    base = row.to(tl.int64) * stride_r
    for ci in range(CHUNKS):
        offs = (p * CHUNKS + ci).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        msk = offs < L
        key = _load_key(s_ptr, base + offs, msk, IS64)
        tie = ((key == thr) & msk).to(tl.int32)
        incl = tl.cumsum(tie, axis=0)
        pruned = (key < thr) | ((tie > 0) & (seen + incl <= quota))
        tl.store(keep_ptr + row.to(tl.int64) * L + offs, (~pruned).to(tl.uint8), mask=msk)
        seen += tl.sum(tie, axis=0)


@triton.jit
def _count_rows(s_ptr, base, rmask, L, cand, IS64: tl.constexpr, BR: tl.constexpr,
                BLOCK: tl.constexpr, EQ: tl.constexpr):
    """Per row of the tile: #{keys < cand} (or == cand with EQ) over the whole row -> [BR]."""
    total = tl.zeros((BR, BLOCK), dtype=tl.int32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rmask[:, None] & (offs < L)[None, :]
        key = _load_key(s_ptr, base[:, None] + offs[None, :], msk, IS64)
        if EQ:
            total += ((key == cand[:, None]) & msk).to(tl.int32)
        else:
            total += ((key < cand[:, None]) & msk).to(tl.int32)
    return tl.sum(total, axis=1)


@triton.jit
def _topk_row_kernel(
    s_ptr, keep_ptr, R, L, stride_r, n_prune,
    IS64: tl.constexpr, NBITS: tl.constexpr, BR: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per BR rows: radix select of each row's n_prune-th smallest key, one bit per
    pass over the rows, then the keep mask with ties pruned in index order."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < R
    base = rows.to(tl.int64) * stride_r
    KDT: tl.constexpr = tl.int64 if IS64 else tl.int32
    zero = tl.zeros((BR,), dtype=KDT)
    lowest = zero + (-(2 ** (NBITS - 1)))
    one = tl.full((), 1, KDT)
    thr = tl.where(_count_rows(s_ptr, base, rmask, L, zero, IS64, BR, BLOCK, False) < n_prune,
                   zero, lowest)
    for b in range(NBITS - 1):
        cand = thr + (one << (NBITS - 2 - b))
        below = _count_rows(s_ptr, base, rmask, L, cand, IS64, BR, BLOCK, False)
        thr = tl.where(below < n_prune, cand, thr)
    # ties still to prune in each row: one live value instead of a quota and a running count
    # (``seen + incl <= quota`` is ``incl <= left``), which keeps this loop free of spills
    left = n_prune - _count_rows(s_ptr, base, rmask, L, thr, IS64, BR, BLOCK, False)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rmask[:, None] & (offs < L)[None, :]
        key = _load_key(s_ptr, base[:, None] + offs[None, :], msk, IS64)
        tie = ((key == thr[:, None]) & msk).to(tl.int32)
        incl = tl.cumsum(tie, axis=1)
        pruned = (key < thr[:, None]) | ((tie > 0) & (incl <= left[:, None]))
        out = rows.to(tl.int64)[:, None] * L + offs[None, :]
        tl.store(keep_ptr + out, (~pruned).to(tl.uint8), mask=msk)
        left -= tl.sum(tie, axis=1)


def topk_mask(scores: torch.Tensor, n_prune: int, *, fused: bool | None = None) -> torch.Tensor:
    """Keep mask ``[R, L]`` bool pruning the ``n_prune`` smallest of each row (ties: lower index
    first). Pass ``scores.reshape(1, -1)`` for a per-layer mask.

    ``fused`` (default: rows of at most 64 blocks) runs one program per row doing the whole
    select; otherwise every pass is a kernel over ``[R, chunk ranges]`` (a per-layer mask of a
    large matrix spreads over the device).
    """
    R, L = scores.shape
    dev = scores.device
    keep = torch.ones(R, L, dtype=torch.uint8, device=dev)
    if n_prune <= 0 or R == 0 or L == 0:
        return keep.view(torch.bool)
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    is64 = scores.dtype == torch.float64
    kdt = torch.int64 if is64 else torch.int32
    nbits = 64 if is64 else 32
    block = _block(L, 2048 if interpreting() else 1024)
    n_blocks = triton.cdiv(L, block)
    if fused is None:
        fused = n_blocks <= 64
    if fused:
        # GPU: one row per program (a row of a few thousand keys stays in L1 across the passes);
        # interpreter: many rows per program (each program instance is costly there)
        br = min(32, triton.next_power_of_2(R)) if interpreting() else 1
        _topk_row_kernel[(triton.cdiv(R, br),)](
            scores, keep, R, L, scores.stride(0), n_prune, IS64=is64, NBITS=nbits, BR=br,
            BLOCK=block, num_warps=8 if block >= 1024 else 4,
        )
        return keep.view(torch.bool)
    # rows of a few thousand: one program per row; huge rows (per layer) spread over programs
    chunks = n_blocks if (R >= 64 or n_blocks <= 8) else max(1, triton.cdiv(n_blocks, 1024))
    n_chunks = triton.cdiv(n_blocks, chunks)
    grid = (R, n_chunks)
    cnt = torch.empty(R, n_chunks, dtype=torch.int32, device=dev)
    meta = dict(IS64=is64, BLOCK=block, CHUNKS=chunks, num_warps=4)

    def below(cand: torch.Tensor) -> torch.Tensor:
        _count_kernel[grid](scores, cand, cnt, L, scores.stride(0), n_chunks, EQUAL=False, **meta)
        return cnt.sum(1, dtype=torch.int64)

    # thr = the n_prune-th smallest key (1-based): the largest t with #{key < t} < n_prune
    k = torch.full((R,), n_prune, dtype=torch.int64, device=dev)
    zero = torch.zeros(R, dtype=kdt, device=dev)
    thr = torch.where(below(zero) < k, zero, torch.full_like(zero, torch.iinfo(kdt).min))
    for bit in range(nbits - 2, -1, -1):
        cand = thr + (1 << bit)
        thr = torch.where(below(cand) < k, cand, thr)
    n_less = below(thr)
    _count_kernel[grid](scores, thr, cnt, L, scores.stride(0), n_chunks, EQUAL=True, **meta)
    tie_before = (torch.cumsum(cnt, 1, dtype=torch.int32) - cnt).contiguous()
    quota = (k - n_less).to(torch.int32)
    _apply_topk_kernel[grid](
        scores, thr, tie_before, quota, keep, L, scores.stride(0), n_chunks, **meta
    )
    return keep.view(torch.bool)
