"""ssgr.compat.wanda (WrappedGPT + prune_wanda's mask selection) against llm-compressor's Wanda
port (``accumulate_row_scalars`` + ``sparsify_weight``, wanda's own formulas) on random layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssgr.compat.wanda import WrappedGPT, prune_wrapped, wanda_mask

transformers = pytest.importorskip("transformers")


def _layer(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(64, 40)
    if kind == "conv1d":
        return transformers.Conv1D(40, 64)
    return nn.Conv2d(4, 6, kernel_size=(2, 4), padding=1, stride=(1, 2))


def _batches(kind: str) -> list[torch.Tensor]:
    if kind == "conv2d":
        return [torch.randn(b, 4, 8, 9) for b in (2, 3, 1)]
    scale = torch.rand(64) * 3  # uneven column norms, as in real activations
    return [torch.randn(b, 17, 64) * scale for b in (2, 3, 1)] + [torch.randn(5, 64) * scale]


def _peer(layer, batches, columns, sparsity, prune_n, prune_m):
    from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import (
        accumulate_row_scalars,
        sparsify_weight,
    )

    S, n = torch.zeros(columns), 0
    for x in batches:
        S, n = accumulate_row_scalars(x, layer, S, n)
    W = sparsify_weight(layer, {layer: S.clone()}, sparsity, prune_n, prune_m)
    return S, n, W


@pytest.mark.peer
@pytest.mark.parametrize("pattern", [(0.5, 0, 0), (0.7, 0, 0), (0, 2, 4), (0, 4, 8), (0, 1, 4)],
                         ids=["50%", "70%", "2:4", "4:8", "prune1:4"])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_equals_wanda(seed, kind, pattern):
    sparsity, prune_n, prune_m = pattern
    layer = _layer(kind)
    peer_layer = copy.deepcopy(layer)
    batches = _batches(kind)
    wrapped = WrappedGPT(layer, layer_id=3, layer_name="mlp.up_proj")
    handle = layer.register_forward_hook(lambda m, i, o: wrapped.add_batch(i[0].data, o.data))
    with torch.no_grad():
        for x in batches:
            layer(x)
    handle.remove()
    S, n, W_peer = _peer(peer_layer, batches, wrapped.columns, sparsity, prune_n, prune_m)

    assert wrapped.nsamples == n
    torch.testing.assert_close(wrapped.scaler_row, S, rtol=1e-5, atol=1e-6)
    mask = prune_wrapped(wrapped, sparsity, prune_n, prune_m)
    W = layer.weight.detach()
    assert torch.equal(W, W_peer)
    assert mask.shape == (wrapped.rows, wrapped.columns) and mask.dtype == torch.bool
    pruned_per_row = mask.sum(1)
    if prune_n:
        assert bool((mask.reshape(wrapped.rows, -1, prune_m).sum(-1) == prune_n).all())
    else:
        assert bool((pruned_per_row == int(wrapped.columns * sparsity)).all())


def test_ties_follow_wandas_stable_sort(seed):
    """Integer metrics with many ties: the pruned set is exactly wanda's stable-sort choice."""
    W_metric = torch.randint(0, 4, (16, 48)).float()
    ref = torch.zeros_like(W_metric, dtype=torch.bool)
    # verbatim from wanda's prune_wanda (use_variant=False)
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(W_metric.shape[1] * 0.5)]
    ref.scatter_(1, indices, True)
    assert torch.equal(wanda_mask(W_metric, 0.5), ref)
    nm = wanda_mask(W_metric, 0.0, 2, 4)
    assert bool((nm.reshape(16, -1, 4).sum(-1) == 2).all())
    g = W_metric.reshape(16, -1, 4)  # every pruned score <= every kept score in its group
    pruned_max = torch.where(nm.reshape(g.shape), g, -1).amax(-1)
    kept_min = torch.where(~nm.reshape(g.shape), g, 99).amin(-1)
    assert bool((pruned_max <= kept_min).all())


def test_scaler_row_semantics(seed):
    lin = nn.Linear(16, 4)
    w = WrappedGPT(lin)
    assert torch.equal(w.scaler_row, torch.zeros(16)) and w.nsamples == 0
    xs = [torch.randn(2, 5, 16), torch.randn(7, 16)]
    for x in xs:
        w.add_batch(x, None)
    X = torch.cat([x.reshape(-1, 16) for x in xs])
    assert w.nsamples == 3 and w.tokens == 17
    torch.testing.assert_close(w.scaler_row, (X**2).sum(0) / 3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: WrappedGPT(nn.LayerNorm(8), layer_name="norm"),
         r"norm.*unsupported layer type LayerNorm"),
        (lambda: prune_wrapped(WrappedGPT(nn.Linear(8, 4), layer_name="up"), 0.5),
         r"up.*no calibration input.*add_batch"),
        (lambda: _fed(nn.Linear(10, 4), "down", lambda w: prune_wrapped(w, 0, 2, 4)),
         r"down.*prune_m=4 does not divide.*10 input columns"),
        (lambda: _fed(nn.Linear(8, 4), "gate", lambda w: prune_wrapped(w, 0, 4, 4)),
         r"gate.*prune_n < prune_m"),
        (lambda: _fed(nn.Linear(8, 4), "q", lambda w: prune_wrapped(w, 1.0)),
         r"q.*sparsity must be in \[0, 1\)"),
        (lambda: WrappedGPT(nn.Linear(8, 4), layer_name="k").add_batch(torch.randn(3, 7), None),
         r"k.*7 features.*8 input columns"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _fed(layer: nn.Module, name: str, then):
    w = WrappedGPT(layer, layer_name=name)
    w.add_batch(torch.randn(2, 3, layer.in_features), None)
    return then(w)


def _upstream_scaler_row(batches, columns):
    """wanda's WrappedGPT.add_batch (lib/layerwrapper.py) written out for nn.Linear."""
    row, n = torch.zeros(columns), 0
    for inp in batches:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        row *= n / (n + tmp)
        n += tmp
        row += torch.norm(inp.type(torch.float32), p=2, dim=1) ** 2 / n
    return row, n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaler_row_is_bit_identical_to_wanda(seed, dtype):
    """The import-only switch: scaler_row equals wanda's bit for bit, so wanda's own mask code
    (use_variant included) gives wanda's masks."""
    batches = [torch.randn(2, 9, 32, dtype=dtype), torch.randn(5, 32, dtype=dtype),
               torch.randn(3, 4, 32, dtype=dtype) * 3]
    w = WrappedGPT(nn.Linear(32, 8).to(dtype))
    for x in batches:
        w.add_batch(x, None)
    ref, n = _upstream_scaler_row(batches, 32)
    assert w.nsamples == n == 6 and w.tokens == 18 + 5 + 12
    assert w.scaler_row.dtype == torch.float32 and torch.equal(w.scaler_row, ref)


@pytest.mark.parametrize("edit", ["in-place", "reassigned"])
def test_scaler_row_edits_are_kept_and_used(seed, edit):
    """scaler_row is a plain tensor: an in-place edit or a new tensor is what metric(), the mask
    and the next add_batch's running average use (as in wanda)."""
    lin = nn.Linear(32, 8)
    w = WrappedGPT(lin)
    held = w.scaler_row  # a reference kept by the caller sees every update (in place, as wanda)
    b1, b2 = torch.randn(2, 6, 32), torch.randn(3, 6, 32)
    w.add_batch(b1, None)
    assert held is w.scaler_row
    boost = torch.ones(32)
    boost[:8] = 100.0  # make the first 8 input columns count much more
    if edit == "in-place":
        w.scaler_row.mul_(boost)
        assert held is w.scaler_row
    else:
        w.scaler_row = w.scaler_row * boost
        assert held is not w.scaler_row
    edited = w.scaler_row.clone()
    W = lin.weight.detach().clone()
    torch.testing.assert_close(w.metric(), W.abs() * edited.sqrt(), rtol=0, atol=0)
    # the next batch continues wanda's running average from the edited values
    w.add_batch(b2, None)
    X2 = b2.reshape(-1, 32).t()
    expect = edited * (2 / 5) + torch.norm(X2, p=2, dim=1) ** 2 / 5
    torch.testing.assert_close(w.scaler_row, expect, rtol=1e-6, atol=0)
    mask = prune_wrapped(w, 0.5)
    assert bool(mask[:, 8:].float().mean() > 0.6), "boosted columns are pruned less"
    assert torch.equal(mask, wanda_mask(W.abs() * expect.sqrt(), 0.5))
    assert torch.equal(lin.weight.detach(), W.masked_fill(mask, 0))


def test_prune_wrapped_writes_the_weight_in_place(seed):
    lin = nn.Linear(16, 4)
    w = WrappedGPT(lin)
    w.add_batch(torch.randn(2, 3, 16), None)
    ptr = lin.weight.data_ptr()
    prune_wrapped(w, 0, 2, 4)
    assert lin.weight.data_ptr() == ptr and int((lin.weight == 0).sum()) == 4 * 16 // 2


@pytest.mark.parametrize("bad", [torch.ones(7), torch.ones(8, dtype=torch.long), None],
                         ids=["shape", "int", "none"])
def test_replaced_scaler_row_must_fit(bad):
    w = WrappedGPT(nn.Linear(8, 4), layer_name="v_proj")
    w.scaler_row = bad
    with pytest.raises(ValueError, match=r"v_proj.*scaler_row must be a float tensor of shape"):
        w.add_batch(torch.randn(2, 3, 8), None)
