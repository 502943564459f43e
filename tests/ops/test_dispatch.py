"""Capability-aware dispatch: each implementation's ``supports`` decides, automatic dispatch skips
what cannot take a call, a forced backend raises with the reason, per-op orders, float64 calls
go to an implementation that computes in float64.

The GPU cases run on this CPU machine: the real capability functions of the cuda and triton
implementations are asked through :func:`ssgr.ops._registry.resolve` for ``cuda`` tensors, with
their probes replaced (``_registry.substituted``) by "available" and their kernels by a function
that fails the test if it is ever called. No GPU kernel runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ssgr.ops import (
    BackendError,
    _registry,
    hessian_accumulate,
    nm_mask,
    sparsegpt_prune,
    support_matrix,
    topk_mask,
)
from ssgr.ops import reference as ref
from ssgr.ops.hessian import hessian_call
from ssgr.ops.masks import nm_call, topk_call
from ssgr.ops.sparsegpt import sparsegpt_call

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")


def _never(*args, **kwargs):
    raise AssertionError("dispatch tests must not run a kernel")


@pytest.fixture
def gpu_available(monkeypatch):
    """The cuda and triton implementations of every op look available on cuda tensors (real
    ``supports``, fake probe, a kernel that must not run); no self-check (it would run them)."""
    monkeypatch.setenv(_registry.SELFCHECK_ENV, "0")
    monkeypatch.delenv("SSGR_BACKEND", raising=False)
    with _ctx_all():
        yield


def _ctx_all():
    import contextlib

    stack = contextlib.ExitStack()
    for op in ("hessian", "sparsegpt", "nm_mask", "topk_mask"):
        for b in ("cuda", "triton"):
            stack.enter_context(_registry.substituted(
                op, b, probe=lambda: None, devices=("cuda",), fn=_never))
    return stack


def _pick(op, call, backend=None):
    return _registry.resolve(op, CUDA, backend, **call)[0]


# ----------------------------------------------------------------------------------- SparseGPT


def test_sparsegpt_blocksize_256_skips_cuda(gpu_available):
    W, H = torch.randn(8, 512), torch.eye(512)
    assert _pick("sparsegpt", sparsegpt_call(W, H, sparsity=0.5)) == "cuda"
    call = sparsegpt_call(W, H, sparsity=0.5, blocksize=256)
    assert _pick("sparsegpt", call) == "triton"
    with pytest.raises(BackendError, match="at most 128 columns"):
        _pick("sparsegpt", call, backend="cuda")
    wide = sparsegpt_call(W, H, sparsity=0.5, blocksize=512)
    assert _pick("sparsegpt", wide) == "reference"
    with pytest.raises(BackendError, match="at most 256 columns"):
        _pick("sparsegpt", wide, backend="triton")


def test_sparsegpt_wide_nm_group_skips_cuda(gpu_available):
    W, H = torch.randn(8, 256), torch.eye(256)
    call = sparsegpt_call(W, H, n=16, m=64)
    assert _pick("sparsegpt", call) == "triton"
    with pytest.raises(BackendError, match="N:M groups of at most 32"):
        _pick("sparsegpt", call, backend="cuda")
    with _registry.substituted("sparsegpt", "triton", probe=lambda: "pretend it is missing"):
        assert _pick("sparsegpt", call) == "reference"
    assert _pick("sparsegpt", sparsegpt_call(W, H, n=2, m=4)) == "cuda"


def test_sparsegpt_float64_on_cuda_goes_to_the_reference(gpu_available):
    W, H = torch.randn(8, 64), torch.eye(64)
    for call in (sparsegpt_call(W.double(), H, sparsity=0.5),
                 sparsegpt_call(W, H.double(), sparsity=0.5)):
        assert _pick("sparsegpt", call) == "reference"
        for b in ("cuda", "triton"):
            with pytest.raises(BackendError, match="float64"):
                _pick("sparsegpt", call, backend=b)


def test_the_public_call_passes_its_properties(gpu_available, monkeypatch):
    """sparsegpt_prune hands resolve() the call's properties (n kept, m, blocksize, dtypes)."""
    seen = {}
    real = _registry.resolve

    def spy(op, device, backend=None, **call):
        seen.update(call)
        return real(op, device, backend, **call)

    monkeypatch.setattr("ssgr.ops.sparsegpt.resolve", spy)
    sparsegpt_prune(torch.randn(4, 128), torch.eye(128), n=3, m=8, blocksize=64)
    assert seen == dict(dtype=torch.float32, H_dtype=torch.float32, rows=4, cols=128,
                        blocksize=64, n=3, m=8)


def test_cuda_limits_match_the_kernel_sources():
    from ssgr.ops.sparsegpt import gpu

    src = (ROOT / "csrc" / "sparsegpt.cu").read_text()
    assert re.search(rf"constexpr int MAX_M = {gpu.CUDA_MAX_M};", src)
    assert re.search(rf"count > {gpu.CUDA_MAX_BLOCK}\b", src)
    static = (ROOT / "benchmarks" / "results" / "sm90a-static.md").read_text()
    assert f"BC={gpu.TRITON_MAX_BLOCK}," in static  # compiled and spill-checked for sm_90a
    assert f"BC={2 * gpu.TRITON_MAX_BLOCK}," not in static


# ------------------------------------------------------------------------------------- Hessian


def test_hessian_float64_on_cuda_goes_to_the_reference(gpu_available):
    X = torch.randn(16, 32)
    H64 = torch.zeros(32, 32, dtype=torch.float64)
    assert _pick("hessian", hessian_call(H64, X)) == "reference"
    assert _pick("hessian", hessian_call(H64, X.double())) == "reference"
    with pytest.raises(BackendError, match="float64 oracle"):
        _pick("hessian", hessian_call(H64, X), backend="cuda")
    assert _pick("hessian", hessian_call(torch.zeros(32, 32), X.bfloat16())) == "cuda"


# --------------------------------------------------------------------------------------- masks


def test_layer_wide_topk_on_cuda_avoids_the_one_block_kernel(gpu_available):
    s = torch.randn(64, 128)
    assert _pick("topk_mask", topk_call(s, "row")) == "cuda"
    assert _pick("topk_mask", topk_call(s, "layer")) == "reference"
    assert _registry.dispatch_order("topk_mask", "cuda", per="layer") == (
        "reference", "triton", "cuda")
    # forcing still runs it (correct, only slow)
    assert _pick("topk_mask", topk_call(s, "layer"), backend="cuda") == "cuda"
    assert _registry.dispatch_order("topk_mask", "cpu", per="layer") == ("cpu", "reference")


def test_nm_mask_wide_groups_stay_on_the_gpu(gpu_available):
    s = torch.randn(8, 128)
    assert _pick("nm_mask", nm_call(s, 16, 64)) == "cuda"
    assert _pick("nm_mask", nm_call(s.double(), 2, 4)) == "cuda"


# ------------------------------------------------------------------------------ registry rules


def test_automatic_dispatch_never_raises_for_a_call_the_reference_takes(monkeypatch):
    monkeypatch.delenv("SSGR_BACKEND", raising=False)
    with _registry.substituted("sparsegpt", "cpu",
                               supports=lambda **call: "declines everything"):
        assert _registry.resolve("sparsegpt", "cpu", None, dtype=torch.float32)[0] == "reference"
        with pytest.raises(BackendError, match="cannot take this 'sparsegpt' call: declines"):
            _registry.resolve("sparsegpt", "cpu", "cpu", dtype=torch.float32)


def test_env_forced_backend_checks_the_call(monkeypatch):
    monkeypatch.setenv("SSGR_BACKEND", "cpu")
    W, H = torch.randn(4, 16, dtype=torch.float64), torch.eye(16, dtype=torch.float64)
    if support_matrix()["sparsegpt"]["cpu"] is None:
        with pytest.raises(BackendError, match="SSGR_BACKEND='cpu' cannot take .*float64"):
            sparsegpt_prune(W, H, sparsity=0.5)


def test_resolve_without_call_properties_still_works(monkeypatch):
    """Callers that only ask which backend a device gets (no properties) are not refused."""
    monkeypatch.delenv("SSGR_BACKEND", raising=False)
    expected = "cpu" if support_matrix()["sparsegpt"]["cpu"] is None else "reference"
    assert _registry.resolve("sparsegpt", torch.device("cpu"))[0] == expected


def test_substituted_restores_the_registry():
    before = _registry.implementation("nm_mask", "cpu")
    with _registry.substituted("nm_mask", "cpu", probe=lambda: "gone") as impl:
        assert _registry.implementation("nm_mask", "cpu") is impl
        assert support_matrix()["nm_mask"]["cpu"] == "gone"
    assert _registry.implementation("nm_mask", "cpu") is before
    with _registry.substituted("wanda_scores", "cpu", fn=_never, devices=("cpu",)):
        assert _registry.implementation("wanda_scores", "cpu") is not None
    assert _registry.implementation("wanda_scores", "cpu") is None


def test_info_shows_orders_and_limits():
    from ssgr.info import info_text

    text = info_text()
    assert "sparsegpt: cuda: cuda > triton > reference; cpu: cpu > reference" in text
    assert "cuda, per='layer': reference > triton > cuda" in text
    assert "blocksize <= 128; m <= 32" in text
    assert "SSGR_SELFCHECK=0" in text


# ------------------------------------------------------------- float64 on the default CPU path


def test_sparsegpt_float64_default_path_is_the_float64_oracle(seed, monkeypatch):
    """The docstring promises a float64 computation for a float64 W or H: the default dispatch
    gives exactly the reference's float64 result (the cpu backend computes in float32)."""
    monkeypatch.delenv("SSGR_BACKEND", raising=False)
    from _util import random_hessian

    W = torch.randn(24, 96, dtype=torch.float64)
    H = random_hessian(96, dtype=torch.float64)
    for kw in (dict(sparsity=0.5), dict(n=2, m=4)):
        out = sparsegpt_prune(W, H, blocksize=32, **kw)
        oracle = sparsegpt_prune(W, H, blocksize=32, backend="reference", **kw)
        assert out.weight.dtype == torch.float64
        assert torch.equal(out.weight, oracle.weight) and torch.equal(out.mask, oracle.mask)
        assert out.loss == oracle.loss
        # a float64 H with a float32 W: computed in float64 too, returned in W's dtype
        mixed = sparsegpt_prune(W.float(), H, blocksize=32, **kw)
        o2 = sparsegpt_prune(W.float(), H, blocksize=32, backend="reference", **kw)
        assert torch.equal(mixed.weight, o2.weight) and mixed.loss == o2.loss
        fp32 = sparsegpt_prune(W.float(), H.float(), blocksize=32, **kw)
        assert not torch.equal(fp32.weight.double(), oracle.weight)  # it is a different path
    if support_matrix()["sparsegpt"]["cpu"] is None:
        with pytest.raises(BackendError, match="computes in float32"):
            sparsegpt_prune(W, H, sparsity=0.5, backend="cpu")


def test_float64_audit_of_the_other_ops_on_cpu(seed, monkeypatch):
    """hessian (cpu: blocked SYRK in H's dtype) and the masks (cpu: float64 kept) compute in
    float64 on the default path."""
    monkeypatch.delenv("SSGR_BACKEND", raising=False)
    X = torch.randn(300, 400, dtype=torch.float64)
    H = torch.zeros(400, 400, dtype=torch.float64)
    hessian_accumulate(H, X)
    torch.testing.assert_close(H, X.T @ X, rtol=1e-13, atol=1e-12)
    s = torch.randn(16, 64, dtype=torch.float64)
    s[0, :4] = torch.tensor([1.0, 1.0 + 2**-40, 1.0, 1.0 - 2**-40], dtype=torch.float64)
    assert torch.equal(nm_mask(s, 2, 4), ref.nm_mask(s, 2, 4))
    for per in ("row", "layer"):
        k = int((64 if per == "row" else s.numel()) * 0.5)
        assert torch.equal(topk_mask(s, 0.5, per), ref.topk_mask(s, k, per))
