"""Triton Hessian accumulation: ``H[d, d] += X^T X`` (fp32) for ``X[t, d]`` bf16/fp16/fp32.

One program owns one ``BM x BM`` tile of the upper triangle (``bi <= bj``) and a range of tokens;
it streams its two column panels of X through ``tl.dot`` (tensor cores for bf16/fp16 with fp32
accumulation; IEEE fp32 FMA for fp32 X, so fp32 accuracy is kept) and adds the tile to ``H[bi, bj]``
and its transpose to ``H[bj, bi]``: only upper tiles are computed and H stays exactly symmetric
(diagonal tiles are symmetrised before the store). The diagonal tiles also add their diagonal, the
column squared norms, into an optional ``sq[d]`` in the same pass.

Any token count is one call. When there are few tiles for the device (small d), the tokens are
split over ``splits`` programs per tile whose partial tiles go to a workspace and are summed in a
fixed order by a second kernel: the result is deterministic (no atomics).

bf16/fp16 are upcast to fp32 right after ``tl.load`` when interpreting (``TRITON_INTERPRET=1``;
the interpreter's bf16 is wrong). The products of two bf16/fp16 values are exact in fp32, so
this changes only the accumulation order.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["hessian_accumulate", "default_splits", "interpreting"]


def interpreting() -> bool:
    """True when triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _store_tile(h_ptr, sq_ptr, acc, bi, bj, D, BM: tl.constexpr, HAS_SQ: tl.constexpr):
    """``H[bi, bj] += acc``, ``H[bj, bi] += acc^T`` (diagonal tiles: symmetrised acc once)."""
    r = bi * BM + tl.arange(0, BM)
    c = bj * BM + tl.arange(0, BM)
    rm = r < D
    cm = c < D
    m2 = rm[:, None] & cm[None, :]
    up = r.to(tl.int64)[:, None] * D + c[None, :]
    if bi == bj:
        local_r = tl.arange(0, BM)[:, None]
        local_c = tl.arange(0, BM)[None, :]
        sym = tl.where(local_r <= local_c, acc, tl.trans(acc))
        h = tl.load(h_ptr + up, mask=m2, other=0.0)
        tl.store(h_ptr + up, h + sym, mask=m2)
        if HAS_SQ:
            diag = tl.sum(tl.where(local_r == local_c, acc, 0.0), axis=1)
            s = tl.load(sq_ptr + r, mask=rm, other=0.0)
            tl.store(sq_ptr + r, s + diag, mask=rm)
    else:
        h = tl.load(h_ptr + up, mask=m2, other=0.0)
        tl.store(h_ptr + up, h + acc, mask=m2)
        lo = c.to(tl.int64)[:, None] * D + r[None, :]
        m2t = cm[:, None] & rm[None, :]
        ht = tl.load(h_ptr + lo, mask=m2t, other=0.0)
        tl.store(h_ptr + lo, ht + tl.trans(acc), mask=m2t)


@triton.jit
def _xtx_kernel(
    x_ptr, h_ptr, sq_ptr, ws_ptr, ti_ptr, tj_ptr,
    T, D, stride_t, stride_d, per_split, n_tiles,
    BM: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr, HAS_SQ: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    s = tl.program_id(1)
    bi = tl.load(ti_ptr + tile)
    bj = tl.load(tj_ptr + tile)
    r = bi * BM + tl.arange(0, BM)
    c = bj * BM + tl.arange(0, BM)
    rm = r < D
    cm = c < D
    t0 = s * per_split
    t1 = tl.minimum(t0 + per_split, T)
    acc = tl.zeros((BM, BM), dtype=tl.float32)
    for t in range(t0, t1, BK):
        tk = t + tl.arange(0, BK)
        tm = tk < t1
        toff = tk.to(tl.int64) * stride_t
        a = tl.load(x_ptr + r[:, None] * stride_d + toff[None, :],
                    mask=rm[:, None] & tm[None, :], other=0.0)  # [BM, BK] = X[t, rows]^T
        b = tl.load(x_ptr + toff[:, None] + c[None, :] * stride_d,
                    mask=tm[:, None] & cm[None, :], other=0.0)  # [BK, BM] = X[t, cols]
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    if SPLIT == 1:
        _store_tile(h_ptr, sq_ptr, acc, bi, bj, D, BM, HAS_SQ)
    else:
        loc = tl.arange(0, BM)
        off = ((s * n_tiles + tile).to(tl.int64) * BM * BM + loc[:, None] * BM + loc[None, :])
        tl.store(ws_ptr + off, acc)


@triton.jit
def _reduce_kernel(
    ws_ptr, h_ptr, sq_ptr, ti_ptr, tj_ptr, D, n_tiles,
    BM: tl.constexpr, SPLIT: tl.constexpr, HAS_SQ: tl.constexpr,
):
    """Sum the SPLIT partial tiles of one tile in split order, then add to H (deterministic)."""
    tile = tl.program_id(0)
    bi = tl.load(ti_ptr + tile)
    bj = tl.load(tj_ptr + tile)
    loc = tl.arange(0, BM)
    acc = tl.zeros((BM, BM), dtype=tl.float32)
    for s in range(SPLIT):
        off = (s * n_tiles + tile).to(tl.int64) * BM * BM + loc[:, None] * BM + loc[None, :]
        acc += tl.load(ws_ptr + off)
    _store_tile(h_ptr, sq_ptr, acc, bi, bj, D, BM, HAS_SQ)


@functools.lru_cache(maxsize=32)
def _upper_tiles(nt: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row / column block indices of the upper-triangle tiles, row-major (``bi <= bj``)."""
    iu = torch.triu_indices(nt, nt)
    return (iu[0].to(torch.int32).to(device), iu[1].to(torch.int32).to(device))


def _config(dtype: torch.dtype) -> dict:
    if interpreting():
        return dict(BM=32, BK=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # IEEE fp32: CUDA-core FMA, smaller tiles
        return dict(BM=64, BK=32, num_warps=4, num_stages=3)
    return dict(BM=128, BK=64, num_warps=8, num_stages=3)


def default_splits(tokens: int, d: int, dtype: torch.dtype, device: torch.device) -> int:
    """Token splits per tile: enough programs for about two waves on the device, at least
    ``4 * BK`` tokens per split."""
    cfg = _config(dtype)
    nt = triton.cdiv(d, cfg["BM"])
    n_tiles = nt * (nt + 1) // 2
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = os.cpu_count() or 1
    want = triton.cdiv(2 * sms, n_tiles)
    return max(1, min(want, 64, tokens // (4 * cfg["BK"])))


def hessian_accumulate(
    H: torch.Tensor, X: torch.Tensor, sq: torch.Tensor | None = None, *, splits: int | None = None
) -> None:
    """``H[d, d] += X^T X`` (fp32, in place, symmetric) and ``sq[d] += sum_t X[t]^2`` if given.

    Args:
        H: ``[d, d]`` float32, contiguous.
        X: ``[t, d]`` bf16/fp16/fp32 (any strides).
        sq: optional ``[d]`` float32 column squared norms, updated from the same pass.
        splits: token splits per tile (None: :func:`default_splits`).
    """
    T, D = X.shape
    if T == 0:
        return
    cfg = _config(X.dtype)
    bm = cfg.pop("BM")
    nt = triton.cdiv(D, bm)
    ti, tj = _upper_tiles(nt, str(H.device))
    n_tiles = ti.numel()
    split = splits if splits is not None else default_splits(T, D, X.dtype, H.device)
    split = max(1, min(int(split), triton.cdiv(T, cfg["BK"])))
    per_split = triton.cdiv(triton.cdiv(T, split), cfg["BK"]) * cfg["BK"]
    split = triton.cdiv(T, per_split)
    ws = (
        torch.empty(split, n_tiles, bm, bm, dtype=torch.float32, device=H.device)
        if split > 1 else H
    )
    has_sq = sq is not None
    sq_arg = sq if has_sq else H
    upcast = interpreting() and X.dtype != torch.float32
    ieee = X.dtype == torch.float32 or upcast
    _xtx_kernel[(n_tiles, split)](
        X, H, sq_arg, ws, ti, tj, T, D, X.stride(0), X.stride(1), per_split, n_tiles,
        BM=bm, SPLIT=split, HAS_SQ=has_sq, UPCAST=upcast, IEEE=ieee, **cfg,
    )
    if split > 1:
        _reduce_kernel[(n_tiles,)](
            ws, H, sq_arg, ti, tj, D, n_tiles, BM=bm, SPLIT=split, HAS_SQ=has_sq, num_warps=4,
        )
