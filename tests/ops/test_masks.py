"""Masks: N:M by property, top-k per row / layer, every backend == reference (ties included),
Wanda's selection, bad input."""

from __future__ import annotations

import pytest
import torch

from ssgr.errors import InputError
from ssgr.ops import nm_mask, support_matrix, topk_mask, wanda_scores
from ssgr.ops import reference as ref


def _backends(op: str) -> list[str]:
    return ["reference"] + [b for b in ("cpu", "triton", "cuda") if support_matrix()[op][b] is None]


NM_BACKENDS = _backends("nm_mask")
TOPK_BACKENDS = _backends("topk_mask")


@pytest.mark.parametrize("backend", NM_BACKENDS)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8), (5, 16), (1, 2), (30, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nm_mask_property_and_equality(seed, backend, n, m, dtype):
    rows = 37
    scores = torch.randn(rows, 5 * m).to(dtype)
    keep = nm_mask(scores, n, m, backend=backend)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    g = keep.reshape(rows, -1, m)
    assert bool((g.sum(-1) == n).all())
    s = scores.float().reshape(rows, -1, m)
    # every kept score >= every pruned score of its group
    kept_min = torch.where(g, s, torch.inf).amin(-1)
    pruned_max = torch.where(~g, s, -torch.inf).amax(-1)
    assert bool((kept_min >= pruned_max).all())
    assert torch.equal(keep, ref.nm_mask(scores, n, m))


@pytest.mark.parametrize("backend", NM_BACKENDS)
def test_nm_mask_ties_keep_lower_column(backend):
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0]])
    keep = nm_mask(scores, 2, 4, backend=backend)
    assert keep.tolist() == [[True, True, False, False, False, True, True, False]]
    many = torch.randint(0, 3, (50, 64)).float()  # lots of ties
    for n, m in ((2, 4), (1, 4), (3, 4), (4, 8), (3, 8), (5, 16)):  # unrolled m=4/8 and generic
        assert torch.equal(nm_mask(many, n, m, backend=backend), ref.nm_mask(many, n, m))


@pytest.mark.parametrize("backend", TOPK_BACKENDS)
@pytest.mark.parametrize("per", ["row", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_topk_mask_counts_and_equality(seed, backend, per, sparsity):
    scores = torch.randn(23, 77)
    keep = topk_mask(scores, sparsity, per, backend=backend)
    if per == "row":
        assert bool(((~keep).sum(1) == int(77 * sparsity)).all())
    else:
        assert int((~keep).sum()) == int(23 * 77 * sparsity)
    k = int((77 if per == "row" else 23 * 77) * sparsity)
    assert torch.equal(keep, ref.topk_mask(scores, k, per))
    if 0 < sparsity:
        flat, k = (scores.flatten(), keep.flatten()) if per == "layer" else (scores[0], keep[0])
        assert flat[k].min() >= flat[~k].max()


@pytest.mark.parametrize("backend", TOPK_BACKENDS)
def test_topk_ties_match_wandas_stable_sort(backend):
    scores = torch.randint(0, 4, (31, 64)).float()
    keep = topk_mask(scores, 0.5, "row", backend=backend)
    # wanda: W_mask.scatter_(1, torch.sort(W_metric, dim=-1, stable=True)[1][:, :k], True)
    idx = torch.sort(scores, dim=-1, stable=True)[1][:, :32]
    pruned = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    assert torch.equal(keep, ~pruned)


def test_wanda_scores(seed):
    W = torch.randn(5, 7)
    norms = torch.rand(7)
    torch.testing.assert_close(wanda_scores(W, norms), W.abs() * norms.sqrt())
    assert wanda_scores(W.bfloat16(), norms).dtype == torch.float32
    o = wanda_scores(W.double(), norms.double())
    torch.testing.assert_close(o, W.double().abs() * norms.double().sqrt())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nm_mask(torch.randn(4, 10), 2, 4), "not divisible by m=4"),
        (lambda: nm_mask(torch.randn(4, 8), 4, 4), "0 < n < m"),
        (lambda: nm_mask(torch.randn(4, 8), 0, 4), "0 < n < m"),
        (lambda: nm_mask(torch.randn(4, 8), 2.0, 4), "must be ints"),
        (lambda: nm_mask(torch.randn(8), 2, 4), "2-D"),
        (lambda: nm_mask(torch.full((2, 8), float("nan")), 2, 4), "NaN/Inf"),
        (lambda: nm_mask(torch.ones(2, 8, dtype=torch.int32), 2, 4), "dtype"),
        (lambda: topk_mask(torch.randn(4, 8), 1.5), r"\[0, 1\)"),
        (lambda: topk_mask(torch.randn(4, 8), 0.5, per="column"), "'row' or 'layer'"),
        (lambda: wanda_scores(torch.randn(4, 8), torch.rand(7)), "7 entries but W has 8"),
        (lambda: wanda_scores(torch.randn(4, 8), -torch.rand(8)), "negative"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(InputError, match=match):
        call()
