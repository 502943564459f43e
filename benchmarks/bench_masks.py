"""Mask extraction at real models' weight shapes: N:M (2:4) keep masks, per-row and layer-wide
50% top-k masks (Wanda's per-output selection; magnitude pruning over a whole layer) and Wanda
scores.

One group per op and shape: every ssgr backend of the op available on this device (reference,
cpu; triton, cuda on a GPU) against a plain torch baseline: "torch-topk" for 2:4
(``scores.view(r, c // 4, 4).topk(2, -1)`` scattered into a bool mask) and per row
(``scores.topk(c - k, dim=1)`` scattered); "torch-kthvalue" per layer (``scores >
torch.kthvalue(scores.flatten(), k).values``, one selection over the whole layer).
``wanda_scores`` (reference only) is timed at one shape against the plain expression
``W.abs() * norms.sqrt()`` ("torch-expr"). Random fp32 scores have no ties, so every ssgr mask
must equal the baseline's (checked, ``mask_mismatch`` in extra_info).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from shapes import (
    CPU_BIG_NUMEL,
    DEVICE,
    MASK_LAYERS,
    WANDA_LAYER,
    Layer,
    backends,
    rounds,
    warmup,
)

from ssgr.ops import nm_mask, topk_mask, wanda_scores

N, M = 2, 4
SPARSITY = 0.5
BASELINE = "torch-topk"
LAYER_BASELINE = "torch-kthvalue"
NM_IMPLS = backends("nm_mask") + [BASELINE]
TOPK_IMPLS = backends("topk_mask") + [BASELINE]
TOPK_LAYER_IMPLS = backends("topk_mask") + [LAYER_BASELINE]
WANDA_IMPLS = backends("wanda_scores") + ["torch-expr"]


def _scores(layer: Layer) -> torch.Tensor:
    g = torch.Generator(device=DEVICE).manual_seed(layer.rows + layer.cols)
    return torch.randn(layer.rows, layer.cols, device=DEVICE, generator=g)


def torch_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Baseline N:M keep mask: top-n of each group of m consecutive scores, scattered."""
    r, c = scores.shape
    groups = scores.view(r, c // m, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.view(r, c)


def torch_rowk(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Baseline per-row keep mask: the ``c - int(c * sparsity)`` largest scores of each row."""
    c = scores.shape[1]
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, scores.topk(c - int(c * sparsity), dim=1).indices, True)
    return keep


def torch_layerk(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Baseline layer-wide keep mask: everything above the ``int(numel * sparsity)``-th smallest
    score of the whole layer (``torch.kthvalue``; random fp32 scores have no ties)."""
    k = int(scores.numel() * sparsity)
    if k == 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    return scores > torch.kthvalue(scores.flatten(), k).values


def _bench_mask(benchmark, sync, layer: Layer, impl: str, op: str, group: str,
                baseline: Callable[[torch.Tensor], torch.Tensor],
                fast: Callable[[torch.Tensor], torch.Tensor], rounds_: int,
                base_name: str = BASELINE) -> None:
    """Time ``fast(scores)`` (ssgr backend ``impl``) or ``baseline(scores)`` (the torch baseline)
    on this layer's scores and check the mask equals the baseline's."""
    s = _scores(layer)
    benchmark.group = f"{group} {layer.label} fp32 {DEVICE}"
    benchmark.extra_info.update(op=op, impl=impl, model=layer.model, shape=list(layer.shape),
                                bytes=s.numel() * 5)

    def run() -> torch.Tensor:
        out = baseline(s) if impl == base_name else fast(s)
        sync()
        return out

    out = benchmark.pedantic(run, rounds=rounds_, iterations=1, warmup_rounds=warmup())
    if impl == base_name:
        return
    mism = int((out != baseline(s)).sum())
    benchmark.extra_info.update(mask_mismatch=mism, numel=out.numel())
    assert mism == 0, f"{impl}: {mism} mask entries differ from the torch baseline"


@pytest.mark.parametrize("impl", NM_IMPLS)
@pytest.mark.parametrize("layer", MASK_LAYERS, ids=lambda lay: lay.id)
def test_nm_mask(benchmark, sync, layer: Layer, impl: str) -> None:
    _bench_mask(benchmark, sync, layer, impl, "nm_mask", f"nm_mask {N}:{M}",
                lambda s: torch_nm(s, N, M), lambda s: nm_mask(s, N, M, backend=impl),
                rounds(10, big=layer.numel >= CPU_BIG_NUMEL))


@pytest.mark.parametrize("impl", TOPK_IMPLS)
@pytest.mark.parametrize("layer", MASK_LAYERS, ids=lambda lay: lay.id)
def test_topk_mask(benchmark, sync, layer: Layer, impl: str) -> None:
    _bench_mask(benchmark, sync, layer, impl, "topk_mask", f"topk_mask {SPARSITY:.0%} per row",
                lambda s: torch_rowk(s, SPARSITY),
                lambda s: topk_mask(s, SPARSITY, "row", backend=impl),
                rounds(5, big=layer.numel >= CPU_BIG_NUMEL))


@pytest.mark.parametrize("impl", TOPK_LAYER_IMPLS)
@pytest.mark.parametrize("layer", MASK_LAYERS, ids=lambda lay: lay.id)
def test_topk_mask_layer(benchmark, sync, layer: Layer, impl: str) -> None:
    _bench_mask(benchmark, sync, layer, impl, "topk_mask",
                f"topk_mask {SPARSITY:.0%} per layer", lambda s: torch_layerk(s, SPARSITY),
                lambda s: topk_mask(s, SPARSITY, "layer", backend=impl),
                rounds(5, big=layer.numel >= CPU_BIG_NUMEL), base_name=LAYER_BASELINE)


@pytest.mark.parametrize("impl", WANDA_IMPLS)
def test_wanda_scores(benchmark, sync, impl: str) -> None:
    layer = WANDA_LAYER
    W = _scores(layer)
    g = torch.Generator(device=DEVICE).manual_seed(layer.cols)
    norms = torch.randn(layer.cols, device=DEVICE, generator=g).square()
    benchmark.group = f"wanda_scores {layer.label} fp32 {DEVICE}"
    benchmark.extra_info.update(op="wanda_scores", impl=impl, model=layer.model,
                                shape=list(layer.shape), bytes=W.numel() * 8)

    def run() -> torch.Tensor:
        if impl == "torch-expr":
            out = W.abs() * norms.sqrt()
        else:
            out = wanda_scores(W, norms, backend=impl)
        sync()
        return out

    out = benchmark.pedantic(run, rounds=rounds(10), iterations=1, warmup_rounds=warmup())
    if impl != "torch-expr":
        torch.testing.assert_close(out, W.abs() * norms.sqrt(), rtol=0, atol=0)
