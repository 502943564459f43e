"""Triton Hessian accumulation: ``H[d, d] += X^T X`` (fp32) for ``X[t, d]`` bf16/fp16/fp32.

One program owns one ``BM x BM`` tile of the upper triangle (``bi <= bj``) and a range of tokens;
it streams its two column panels of X through ``tl.dot`` (tensor cores for bf16/fp16 with fp32
accumulation; IEEE fp32 FMA for fp32 X, so fp32 accuracy is kept) and adds the tile to ``H[bi, bj]``
and its transpose to ``H[bj, bi]``: only upper tiles are computed and H stays exactly symmetric
(a diagonal tile adds its upper triangle, diagonal included, in place and its strict upper
triangle transposed).

The tile is held as four ``BM/2 x BM/2`` quarters (four accumulators, four ``tl.dot`` per step
on two row and two column half-panels) and the epilogue adds one quarter at a time to H (64-bit
tile base, 32-bit offsets inside it). Holding the whole tile in the epilogue (accumulator, loaded
H tile and their addresses live at once, and the transposed copy) compiled, for bf16 at
``BM=128, BK=64``, 8 warps, to 255 registers with spills on sm_90a; the quarters compile to 236
registers without spills (static ptxas output: ``benchmarks/sm90_static.py``,
``benchmarks/results/sm90a-static.md``; no GPU has run this kernel).

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

__all__ = ["hessian_accumulate", "default_splits", "interpreting", "GPU_CONFIGS"]

#: Launch configuration per X dtype on a GPU, the one place :func:`_config` (the launcher) and
#: ``benchmarks/sm90_static.py`` (the static sm_90a check) read it from.
GPU_CONFIGS: dict[torch.dtype, dict[str, int]] = {
    torch.float32: dict(BM=64, BK=32, num_warps=4, num_stages=3),  # IEEE fp32: CUDA-core FMA
    torch.float16: dict(BM=128, BK=64, num_warps=8, num_stages=3),
    torch.bfloat16: dict(BM=128, BK=64, num_warps=8, num_stages=3),
}
#: Warps of the split-reduction kernel.
REDUCE_WARPS = 8


def interpreting() -> bool:
    """True when triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _store_part(h_ptr, acc, bi, bj, D, ROFF: tl.constexpr, COFF: tl.constexpr, BH: tl.constexpr,
                BM: tl.constexpr):
    """Add the quarter ``acc[BH, BH]`` (tile rows ``ROFF + [0, BH)``, columns ``COFF + [0, BH)``)
    of tile ``(bi, bj)`` to ``H[bi, bj]`` and its transpose to ``H[bj, bi]``; on a diagonal tile
    only the upper triangle (diagonal included) goes in place and the strict upper triangle
    transposed. Addresses are a 64-bit tile base plus 32-bit offsets inside the tile
    (``BM * D < 2^31``)."""
    lr = ROFF + tl.arange(0, BH)
    lc = COFF + tl.arange(0, BH)
    r = bi * BM + lr
    c = bj * BM + lc
    off_diag = bi != bj
    up_base = h_ptr + (bi * BM).to(tl.int64) * D + bj * BM
    lo_base = h_ptr + (bj * BM).to(tl.int64) * D + bi * BM
    m_up = (r < D)[:, None] & (c < D)[None, :] & ((lr[:, None] <= lc[None, :]) | off_diag)
    up = up_base + (lr[:, None] * D + lc[None, :])
    h = tl.load(up, mask=m_up, other=0.0)
    tl.store(up, h + acc, mask=m_up)
    m_lo = (c < D)[:, None] & (r < D)[None, :] & ((lc[:, None] > lr[None, :]) | off_diag)
    lo = lo_base + (lc[:, None] * D + lr[None, :])
    ht = tl.load(lo, mask=m_lo, other=0.0)
    tl.store(lo, ht + tl.trans(acc), mask=m_lo)


@triton.jit
def _xtx_kernel(
    x_ptr, h_ptr, ws_ptr, ti_ptr, tj_ptr,
    T, D, stride_t, stride_d, per_split, n_tiles,
    BM: tl.constexpr, BK: tl.constexpr, TO_WS: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    """Tile ``(ti[p0], tj[p0])`` of ``X^T X`` over tokens ``[p1 * per_split, ..)`` as four
    ``BM/2 x BM/2`` quarters; added to H, or (``TO_WS``, several splits) written to slot
    ``(p1, p0)`` of the workspace ``ws[splits, n_tiles, BM, BM]``."""
    BH: tl.constexpr = BM // 2
    tile = tl.program_id(0)
    s = tl.program_id(1)
    bi = tl.load(ti_ptr + tile)
    bj = tl.load(tj_ptr + tile)
    r0 = bi * BM + tl.arange(0, BH)
    r1 = r0 + BH
    c0 = bj * BM + tl.arange(0, BH)
    c1 = c0 + BH
    t0 = s * per_split
    t1 = tl.minimum(t0 + per_split, T)
    acc00 = tl.zeros((BH, BH), dtype=tl.float32)
    acc01 = tl.zeros((BH, BH), dtype=tl.float32)
    acc10 = tl.zeros((BH, BH), dtype=tl.float32)
    acc11 = tl.zeros((BH, BH), dtype=tl.float32)
    for t in range(t0, t1, BK):
        tk = t + tl.arange(0, BK)
        tm = tk < t1
        toff = tk.to(tl.int64) * stride_t
        a0 = tl.load(x_ptr + r0[:, None] * stride_d + toff[None, :],
                     mask=(r0 < D)[:, None] & tm[None, :], other=0.0)
        a1 = tl.load(x_ptr + r1[:, None] * stride_d + toff[None, :],
                     mask=(r1 < D)[:, None] & tm[None, :], other=0.0)
        b0 = tl.load(x_ptr + toff[:, None] + c0[None, :] * stride_d,
                     mask=tm[:, None] & (c0 < D)[None, :], other=0.0)
        b1 = tl.load(x_ptr + toff[:, None] + c1[None, :] * stride_d,
                     mask=tm[:, None] & (c1 < D)[None, :], other=0.0)
        if UPCAST:
            a0 = a0.to(tl.float32)
            a1 = a1.to(tl.float32)
            b0 = b0.to(tl.float32)
            b1 = b1.to(tl.float32)
        if IEEE:
            acc00 = tl.dot(a0, b0, acc00, input_precision="ieee")
            acc01 = tl.dot(a0, b1, acc01, input_precision="ieee")
            acc10 = tl.dot(a1, b0, acc10, input_precision="ieee")
            acc11 = tl.dot(a1, b1, acc11, input_precision="ieee")
        else:
            acc00 = tl.dot(a0, b0, acc00)
            acc01 = tl.dot(a0, b1, acc01)
            acc10 = tl.dot(a1, b0, acc10)
            acc11 = tl.dot(a1, b1, acc11)
    if not TO_WS:
        _store_part(h_ptr, acc00, bi, bj, D, 0, 0, BH, BM)
        _store_part(h_ptr, acc01, bi, bj, D, 0, BH, BH, BM)
        _store_part(h_ptr, acc10, bi, bj, D, BH, 0, BH, BM)
        _store_part(h_ptr, acc11, bi, bj, D, BH, BH, BH, BM)
    else:
        lq = tl.arange(0, BH)
        off = (s * n_tiles + tile).to(tl.int64) * BM * BM + lq[:, None] * BM + lq[None, :]
        tl.store(ws_ptr + off, acc00)
        tl.store(ws_ptr + off + BH, acc01)
        tl.store(ws_ptr + off + BH * BM, acc10)
        tl.store(ws_ptr + off + BH * BM + BH, acc11)


@triton.jit
def _reduce_part(ws_ptr, h_ptr, tile, bi, bj, D, n_tiles, n_splits, ROFF: tl.constexpr,
                 COFF: tl.constexpr, BH: tl.constexpr, BM: tl.constexpr):
    """Sum one quarter of the ``n_splits`` partial tiles in split order and add it to H."""
    lq = tl.arange(0, BH)
    loc = (ROFF + lq)[:, None] * BM + (COFF + lq)[None, :]
    acc = tl.zeros((BH, BH), dtype=tl.float32)
    for s in range(n_splits):
        acc += tl.load(ws_ptr + (s * n_tiles + tile).to(tl.int64) * BM * BM + loc)
    _store_part(h_ptr, acc, bi, bj, D, ROFF, COFF, BH, BM)


@triton.jit
def _reduce_kernel(ws_ptr, h_ptr, ti_ptr, tj_ptr, D, n_tiles, n_splits, BM: tl.constexpr):
    """Sum the ``n_splits`` partial tiles of one tile in split order, one quarter at a time, and
    add them to H (deterministic)."""
    BH: tl.constexpr = BM // 2
    tile = tl.program_id(0)
    bi = tl.load(ti_ptr + tile)
    bj = tl.load(tj_ptr + tile)
    _reduce_part(ws_ptr, h_ptr, tile, bi, bj, D, n_tiles, n_splits, 0, 0, BH, BM)
    _reduce_part(ws_ptr, h_ptr, tile, bi, bj, D, n_tiles, n_splits, 0, BH, BH, BM)
    _reduce_part(ws_ptr, h_ptr, tile, bi, bj, D, n_tiles, n_splits, BH, 0, BH, BM)
    _reduce_part(ws_ptr, h_ptr, tile, bi, bj, D, n_tiles, n_splits, BH, BH, BH, BM)


@functools.lru_cache(maxsize=32)
def _upper_tiles(nt: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row / column block indices of the upper-triangle tiles, row-major (``bi <= bj``)."""
    iu = torch.triu_indices(nt, nt)
    return (iu[0].to(torch.int32).to(device), iu[1].to(torch.int32).to(device))


def _config(dtype: torch.dtype) -> dict:
    if interpreting():
        return dict(BM=32, BK=16, num_warps=4, num_stages=1)
    return dict(GPU_CONFIGS.get(dtype, GPU_CONFIGS[torch.bfloat16]))


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


def hessian_accumulate(H: torch.Tensor, X: torch.Tensor, *, splits: int | None = None) -> None:
    """``H[d, d] += X^T X`` (fp32, in place, exactly symmetric).

    Args:
        H: ``[d, d]`` float32, contiguous.
        X: ``[t, d]`` bf16/fp16/fp32 (any strides).
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
    upcast = interpreting() and X.dtype != torch.float32
    ieee = X.dtype == torch.float32 or upcast
    _xtx_kernel[(n_tiles, split)](
        X, H, ws, ti, tj, T, D, X.stride(0), X.stride(1), per_split, n_tiles,
        BM=bm, TO_WS=split > 1, UPCAST=upcast, IEEE=ieee, **cfg,
    )
    if split > 1:
        _reduce_kernel[(n_tiles,)](
            ws, H, ti, tj, D, n_tiles, split, BM=bm, num_warps=REDUCE_WARPS,
        )
