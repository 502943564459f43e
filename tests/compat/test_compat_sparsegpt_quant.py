"""Joint sparsify + quantize through ssgr.compat.sparsegpt.SparseGPT with an IST quantizer
attached (issue #18 item 5), against IST-DASLab's fasterprune loop written out here in torch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssgr.compat.quant import Quantizer
from ssgr.compat.sparsegpt import SparseGPT


def _grid_params(W: torch.Tensor, bits: int, perchannel: bool, sym: bool):
    """IST's min/max grid (mse=False) per row of W (or one for the tensor): (scale, zero)
    as [rows, 1] in W's dtype."""
    maxq = 2**bits - 1
    x = W if perchannel else W.reshape(1, -1)
    xmin = x.min(1).values.clamp(max=0)
    xmax = x.max(1).values.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin, xmax = xmin.masked_fill(both0, -1), xmax.masked_fill(both0, 1)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    rows = W.shape[0]
    return scale.expand(rows).reshape(rows, 1), zero.expand(rows).reshape(rows, 1), maxq


def _ist_fasterprune(W, H, scale, zero, maxq, sparsity, prunen, prunem, blocksize, percdamp,
                     dtype):
    """IST-DASLab fasterprune with a quantizer, in ``dtype``: (Q, pruned mask)."""
    W, H = W.to(dtype).clone(), H.to(dtype).clone()
    scale, zero = scale.to(dtype), zero.to(dtype)
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / torch.diag(Hinv1)[i:i + prunem].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            q = (scale * (torch.clamp(torch.round(q.unsqueeze(1) / scale) + zero, 0, maxq)
                          - zero)).flatten()
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, pruned


def _calibrated(rows=48, cols=128, seed_shift=0) -> SparseGPT:
    layer = nn.Linear(cols, rows)
    gpt = SparseGPT(layer)
    mix = torch.randn(cols, cols) * 0.3 + torch.eye(cols)
    for b in (3, 2, 1):
        gpt.add_batch(torch.randn(b, 40, cols) @ mix, None)
    return gpt


# (bits, perchannel, sym, fasterprune kwargs): IST's --wbits 4 driver setting first, then siblings
CASES = {
    "4bit-perchannel-asym-50%": (4, True, False, dict(sparsity=0.5)),
    "4bit-perchannel-asym-2:4": (4, True, False, dict(sparsity=0.0, prunen=2, prunem=4)),
    "3bit-perchannel-sym-60%": (3, True, True, dict(sparsity=0.6)),
    "4bit-pertensor-asym-50%": (4, False, False, dict(sparsity=0.5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quantizer_is_honoured_as_upstream(seed, case):
    bits, perchannel, sym, kw = CASES[case]
    gpt = _calibrated()
    W0 = gpt.layer.weight.detach().clone()
    H = gpt.H.clone()
    gpt.quantizer = Quantizer()
    gpt.quantizer.configure(bits, perchannel=perchannel, sym=sym, mse=False)
    res = gpt.fasterprune(blocksize=32, **kw)
    W = gpt.layer.weight.detach()

    # the grid was fitted from the dense weight, as IST's find_params(W, weight=True)
    scale, zero, maxq = _grid_params(W0, bits, perchannel, sym)
    torch.testing.assert_close(gpt.quantizer.scale, scale, rtol=0, atol=0)
    torch.testing.assert_close(gpt.quantizer.zero, zero, rtol=0, atol=0)

    # every kept weight is on its row's grid: at most 2^bits distinct values per row
    for r in range(gpt.rows):
        assert torch.unique(W[r][res.mask[r]]).numel() <= 2**bits
    k = (W - 0) / scale + zero
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-3)
    assert bool((W[~res.mask] == 0).all())
    prunen, prunem = kw.get("prunen", 0), kw.get("prunem", 0)
    if prunen:
        assert bool(((~res.mask).reshape(gpt.rows, -1, prunem).sum(-1) == prunen).all())
    else:
        assert abs(float((~res.mask).float().mean()) - kw["sparsity"]) < 0.02

    args = (scale, zero, maxq, kw["sparsity"], prunen, prunem, 32, 0.01)
    # upstream's fp32 loop on the same H: the same computation step for step
    Q32, pruned32 = _ist_fasterprune(W0, H, *args, dtype=torch.float32)
    assert torch.equal(~res.mask, pruned32)
    torch.testing.assert_close(W, Q32, rtol=0, atol=1e-6)
    # float64 oracle: masks equal except near-ties, weights close (a grid midpoint reached
    # differently in fp32 moves a weight one step; its row then differs a little)
    Q64, pruned64 = _ist_fasterprune(W0, H, *args, dtype=torch.float64)
    assert float((~res.mask != pruned64).float().mean()) < 2e-3
    off = ((W.double() - Q64).abs() > 1e-4).float().mean()
    assert float(off) < 2e-3, f"{float(off):.4f} of weights differ from the float64 oracle"


def test_quantized_path_differs_from_plain_and_none_means_none(seed):
    gpt = _calibrated()
    plain, none, quant = (copy.deepcopy(gpt) for _ in range(3))
    r_plain = plain.fasterprune(0.5, blocksize=32)
    none.quantizer = None
    r_none = none.fasterprune(0.5, blocksize=32)
    assert torch.equal(plain.layer.weight, none.layer.weight)
    assert torch.equal(r_plain.mask, r_none.mask)
    quant.quantizer = Quantizer()
    quant.quantizer.configure(4, perchannel=True, sym=False)
    quant.fasterprune(0.5, blocksize=32)
    distinct = max(torch.unique(row).numel() for row in quant.layer.weight.detach())
    plain_distinct = min(torch.unique(row).numel() for row in plain.layer.weight.detach())
    assert distinct <= 16 < plain_distinct


def test_ready_quantizer_is_not_refitted(seed):
    """A quantizer that is ready() keeps its grid (upstream fits only when not ready)."""
    gpt = _calibrated(rows=16, cols=64)
    q = Quantizer()
    q.configure(2, perchannel=True, sym=True)
    q.find_params(torch.randn(16, 64) * 5, weight=True)  # a wider grid than the layer's
    scale = q.scale.clone()
    gpt.quantizer = q
    res = gpt.fasterprune(0.0, prunen=2, prunem=4, blocksize=16)
    assert torch.equal(q.scale, scale)
    W = gpt.layer.weight.detach()
    k = W / scale + q.zero
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-3)
    assert bool((k >= -1e-3).all() and (k <= 3 + 1e-3).all())
    assert int((~res.mask).sum()) == 16 * 64 // 2


def test_sparsity_zero_with_quantizer_only_quantizes(seed):
    gpt = _calibrated(rows=16, cols=64)
    gpt.quantizer = Quantizer()
    gpt.quantizer.configure(8, perchannel=True, sym=False)
    W0 = gpt.layer.weight.detach().clone()
    res = gpt.fasterprune(0.0, blocksize=32)
    assert bool(res.mask.all())
    step = gpt.quantizer.scale.max().item()
    assert (gpt.layer.weight - W0).abs().max().item() < 8 * step


def test_mse_grid_is_no_worse_than_minmax(seed):
    W = torch.randn(8, 256)
    W[:, 0] = 12.0  # an outlier per row: shrinking the range pays
    errs = {}
    for mse in (False, True):
        q = Quantizer()
        q.configure(3, perchannel=True, sym=False, mse=mse)
        q.find_params(W, weight=True)
        errs[mse] = ((q.quantize(W) - W).abs() ** 2.4).sum(1)
    assert bool((errs[True] <= errs[False]).all()) and bool((errs[True] < errs[False]).any())


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda g: setattr(g, "quantizer", Quantizer()), r"not configured.*configure\(bits"),
        (lambda g: setattr(g, "quantizer", object()), r"has no 'maxq'"),
        (lambda g: (setattr(g, "quantizer", Quantizer()), g.quantizer.configure(4),
                    setattr(g, "backend", "cpu")), r"backend='cpu' cannot quantize"),
        (lambda g: (setattr(g, "quantizer", Quantizer(shape=5)), g.quantizer.configure(4),
                    g.quantizer.scale.fill_(1.0)), r"scale of shape \(5,\)"),
    ],
    ids=["unconfigured", "not-a-quantizer", "forced-cpu", "wrong-shape"],
)
def test_quantizer_errors_are_clear(setup, match):
    gpt = SparseGPT(nn.Linear(16, 8), name="fc1")
    gpt.add_batch(torch.randn(2, 6, 16), None)
    setup(gpt)
    with pytest.raises(ValueError, match=r"fc1.*" + match):
        gpt.fasterprune(0.5, blocksize=8)
