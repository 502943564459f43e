"""ssgr.compat.sparsegpt.SparseGPT against llm-compressor's accumulate_hessian + sparsify_weight
(the IST-DASLab semantics) on random layers fed through add_batch from forward hooks."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from ssgr.compat.sparsegpt import SparseGPT

transformers = pytest.importorskip("transformers")


def _layer(kind: str, dtype=torch.float32) -> nn.Module:
    if kind == "linear":
        return nn.Linear(64, 40, bias=True, dtype=dtype)
    if kind == "conv1d":
        return transformers.Conv1D(40, 64).to(dtype)  # nf=40 outputs, nx=64 inputs
    if kind == "conv2d":
        return nn.Conv2d(4, 6, kernel_size=(2, 4), padding=1, stride=(1, 2), dtype=dtype)
    raise AssertionError(kind)


def _batches(kind: str, dtype=torch.float32) -> list[torch.Tensor]:
    """Correlated random inputs: three batches of 3-D (Conv2d: 4-D) activations."""
    mix = torch.randn(64, 64) * 0.4 + torch.eye(64)
    if kind == "conv2d":
        return [torch.randn(b, 4, 8, 9, dtype=dtype) for b in (2, 3, 1)]
    return [(torch.randn(b, 17, 64) @ mix).to(dtype) for b in (2, 3, 1)]


def _calibrate(layer: nn.Module, batches: list[torch.Tensor]) -> SparseGPT:
    """IST usage: a forward hook feeds add_batch(inp[0].data, out.data)."""
    gpt = SparseGPT(layer)
    handle = layer.register_forward_hook(lambda m, i, o: gpt.add_batch(i[0].data, o.data))
    with torch.no_grad():
        for x in batches:
            layer(x)
    handle.remove()
    return gpt


def _peer(layer: nn.Module, batches: list[torch.Tensor], columns: int, sparsity: float,
          prune_n: int, prune_m: int, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """llm-compressor 0.14 on a copy of ``layer``: (H, pruned weight, num_samples)."""
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import (
        accumulate_hessian,
        sparsify_weight,
    )

    H = torch.zeros(columns, columns)  # make_empty_hessian uses weight.shape[1]: wrong for Conv1D
    n = 0
    for x in batches:
        H, n = accumulate_hessian(x, layer, H, n)
    with torch.no_grad():
        _, Q = sparsify_weight(layer, {layer: H.clone()}, sparsity, prune_n, prune_m, blocksize,
                               0.01, False)
    return H, Q, n


# (ssgr-compat fasterprune kwargs, llm-compressor (sparsity, prune_n, prune_m))
PATTERNS = {
    "50%": (dict(sparsity=0.5), (0.5, 0, 0)),
    "2:4": (dict(sparsity=0.0, prunen=2, prunem=4), (0.0, 2, 4)),
    "4:8": (dict(sparsity=0.0, prunen=4, prunem=8), (0.0, 4, 8)),
    "1:4": (dict(sparsity=0.0, prunen=1, prunem=4), (0.0, 1, 4)),  # prune 1 of 4: keep 3
}


@pytest.mark.peer
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_equals_llmcompressor(seed, kind, pattern):
    kw, peer_args = PATTERNS[pattern]
    layer = _layer(kind)
    peer_layer = copy.deepcopy(layer)
    batches = _batches(kind)
    gpt = _calibrate(layer, batches)
    H_peer, Q_peer, n_peer = _peer(peer_layer, batches, gpt.columns, *peer_args, blocksize=32)

    assert gpt.nsamples == n_peer == 6
    torch.testing.assert_close(gpt.H, H_peer, rtol=1e-5, atol=1e-5 * H_peer.abs().max().item())

    res = gpt.fasterprune(blocksize=32, **kw)
    W = layer.weight.detach()
    assert W.dtype == torch.float32 and W.shape == Q_peer.shape
    assert torch.equal(W == 0, Q_peer == 0), "same pruned positions as llm-compressor"
    torch.testing.assert_close(W, Q_peer, rtol=1e-4, atol=1e-5)
    assert gpt.H is None
    # the returned mask is the layer's mask in [rows, columns] layout
    assert res.mask.shape == (gpt.rows, gpt.columns)
    assert int((~res.mask).sum()) == int((W == 0).sum())
    if "prunem" in kw:
        kept = res.mask.reshape(gpt.rows, -1, kw["prunem"]).sum(-1)
        assert bool((kept == kw["prunem"] - kw["prunen"]).all())


@pytest.mark.peer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layer_keeps_dtype(seed, dtype):
    layer = _layer("linear", dtype)
    peer_layer = copy.deepcopy(layer)
    batches = _batches("linear", dtype)
    gpt = _calibrate(layer, batches)
    _, Q_peer, _ = _peer(peer_layer, batches, 64, 0.0, 2, 4, blocksize=32)
    gpt.fasterprune(0.0, prunen=2, prunem=4, blocksize=32)
    W = layer.weight.detach()
    assert W.dtype == dtype and Q_peer.dtype == dtype
    assert torch.equal(W == 0, Q_peer == 0)
    torch.testing.assert_close(W.float(), Q_peer.float(), rtol=1e-2, atol=1e-2)


def test_hessian_has_ist_semantics(seed):
    """H = 2/nsamples * sum X^T X, nsamples counts samples (a 2-D input is one)."""
    layer = nn.Linear(32, 8)
    gpt = SparseGPT(layer)
    xs = [torch.randn(3, 5, 32), torch.randn(7, 32), torch.randn(2, 4, 32)]
    for x in xs:
        gpt.add_batch(x, None)
    X = torch.cat([x.reshape(-1, 32) for x in xs]).double()
    assert gpt.nsamples == 3 + 1 + 2 and gpt.tokens == 15 + 7 + 8
    torch.testing.assert_close(gpt.H.double(), 2 / 6 * X.T @ X, rtol=1e-5, atol=1e-5)
    assert (gpt.rows, gpt.columns) == (8, 32) and gpt.H.dtype == torch.float32


def test_wanda_spelling_and_layer_written_in_place(seed):
    a, b = nn.Linear(64, 24), None
    b = copy.deepcopy(a)
    x = torch.randn(4, 16, 64)
    ga, gb = SparseGPT(a), SparseGPT(b)
    ga.add_batch(x, None)
    gb.add_batch(x, None)
    ptr = a.weight.data_ptr()
    ga.fasterprune(0.5, prunen=2, prunem=4)
    gb.fasterprune(0.5, prune_n=2, prune_m=4)  # wanda's lib/sparsegpt.py spelling
    assert a.weight.data_ptr() == ptr, "weight written in place"
    assert torch.equal(a.weight, b.weight)
    assert not a.weight.requires_grad or a.weight.grad_fn is None


def test_backends_agree(seed):
    layer = nn.Linear(96, 32)
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(3, 40, 96)
    out = {}
    for name, lay in (("default", layer), ("reference", ref_layer)):
        g = SparseGPT(lay, backend=None if name == "default" else "reference")
        g.add_batch(x, None)
        out[name] = g.fasterprune(0.6, blocksize=32)
    assert torch.equal(out["default"].mask, out["reference"].mask)
    torch.testing.assert_close(layer.weight, ref_layer.weight, rtol=1e-4, atol=1e-5)


def test_free_releases_hessian():
    gpt = SparseGPT(nn.Linear(8, 4))
    gpt.add_batch(torch.randn(2, 3, 8), None)
    gpt.free()
    assert gpt.H is None
    with pytest.raises(ValueError, match="released"):
        gpt.fasterprune(0.5)
    with pytest.raises(ValueError, match="released"):
        gpt.add_batch(torch.randn(2, 3, 8), None)


@pytest.mark.parametrize(
    "make,call,match",
    [
        (lambda: SparseGPT(nn.Embedding(10, 4), name="embed"), None,
         r"embed.*unsupported layer type Embedding.*Linear"),
        (lambda: SparseGPT(nn.Conv2d(4, 4, 3, groups=2)), None, "groups=2"),
        (lambda: SparseGPT(nn.Linear(8, 4), name="q_proj"), lambda g: g.fasterprune(0.5),
         r"q_proj.*no calibration input.*add_batch"),
        (lambda: SparseGPT(nn.Linear(10, 4), name="o_proj"),
         lambda g: (g.add_batch(torch.randn(2, 5, 10), None), g.fasterprune(0, 2, 4)),
         r"o_proj.*prunem=4 does not divide.*10 input columns"),
        (lambda: SparseGPT(nn.Linear(8, 4), name="k"),
         lambda g: g.add_batch(torch.randn(2, 5, 9), None), r"k.*9 features.*8 input columns"),
        (lambda: SparseGPT(nn.Linear(8, 4)),
         lambda g: (g.add_batch(torch.randn(2, 5, 8), None), g.fasterprune(0.5, prunen=2,
                                                                            prune_n=1)),
         "not both"),
        (lambda: SparseGPT(nn.Linear(8, 4)),
         lambda g: (g.add_batch(torch.randn(2, 5, 8), None), g.fasterprune(0, 4, 4)),
         "prunen < prunem"),
        (lambda: SparseGPT(nn.Linear(8, 4)),
         lambda g: (g.add_batch(torch.randn(2, 5, 8), None), g.fasterprune(1.5)),
         r"fasterprune: sparsity must be in \[0, 1\)"),
        (lambda: SparseGPT(nn.Linear(16, 4)),
         lambda g: (g.add_batch(torch.randn(2, 5, 16), None), g.fasterprune(0, 2, 8, blocksize=4)),
         "blocksize=4 is not a multiple of m=8"),
        (lambda: SparseGPT(nn.Linear(16, 4)),  # upstream accepts percdamp=0 (no damping)
         lambda g: (g.add_batch(torch.randn(2, 5, 16), None), g.fasterprune(0.5, percdamp=0)),
         r"percdamp must be a float > 0"),
        (lambda: SparseGPT(nn.Conv2d(3, 4, 3)), lambda g: g.add_batch(torch.randn(5, 3), None),
         r"Conv2d input must be \[B, C, H, W\]"),
    ],
)
def test_bad_input_is_a_clear_error(make, call, match):
    with pytest.raises(ValueError, match=match):
        gpt = make()
        call(gpt)


def test_import_has_no_side_effects():
    code = (
        "import sys, logging, torch; before = torch.get_num_threads();"
        "import ssgr.compat, ssgr.compat.sparsegpt, ssgr.compat.wanda;"
        "assert 'llmcompressor' not in sys.modules, 'llmcompressor imported';"
        "assert 'transformers' not in sys.modules, 'transformers imported';"
        "assert torch.get_num_threads() == before;"
        "assert not logging.getLogger().handlers, 'root logging configured'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
