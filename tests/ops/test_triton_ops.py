"""The triton backend under TRITON_INTERPRET=1 on CPU tensors, at small shapes, against the
reference: Hessian (dtypes, token splits, symmetry), N:M and top-k masks (ties, per layer, both
top-k paths), SparseGPT (unstructured, N:M, dead columns, damping).

``TRITON_INTERPRET`` must be set before the kernels are imported, so in a normal test run this
module runs itself in a subprocess with the variable set (``test_interpreter_suite``); in that
subprocess the tests below run and the suite test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
# triton's interpreter trips a numpy deprecation on every scalar index
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
interp_only = pytest.mark.skipif(
    not INTERP, reason="runs inside test_interpreter_suite's TRITON_INTERPRET=1 subprocess"
)


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


# ----------------------------------------------------------------------------- parent process


@pytest.mark.skipif(INTERP, reason="this is the interpreter run itself")
@pytest.mark.skipif(not _has_triton(), reason="triton is not installed")
def test_interpreter_suite():
    """Run this module's interpreter tests in a subprocess with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SSGR_BACKEND", None)
    here = Path(__file__).resolve()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(here)]
    proc = subprocess.run(
        cmd, cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=500
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreter suite failed:\n{tail}"
    assert " passed" in proc.stdout and "no tests ran" not in proc.stdout, tail


@pytest.mark.skipif(INTERP, reason="checks the normal (non-interpreter) process")
def test_importing_ops_does_not_import_triton():
    code = (
        "import sys, ssgr.ops\n"
        "assert 'triton' not in sys.modules, 'import ssgr.ops imported triton'\n"
        "m = ssgr.ops.support_matrix()\n"
        "import torch\n"
        "if not torch.cuda.is_available():\n"
        "    assert 'triton' not in sys.modules, 'the probe imported triton without a device'\n"
        "    assert 'TRITON_INTERPRET' in m['sparsegpt']['triton'], m\n"
        "    assert 'ssgr._cuda' in m['sparsegpt']['cuda'] or 'CUDA' in m['sparsegpt']['cuda'], m\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------------ interpreter process

if INTERP:
    from _util import assert_same_prune, random_hessian

    from ssgr.ops import (
        BackendError,
        HessianAccumulator,
        hessian_accumulate,
        nm_mask,
        sparsegpt_prune,
        support_matrix,
        topk_mask,
    )
    from ssgr.ops import reference as ref


@interp_only
def test_triton_is_available_under_the_interpreter():
    m = support_matrix()
    for op in ("hessian", "sparsegpt", "nm_mask", "topk_mask"):
        assert m[op]["triton"] is None, m[op]
    # never picked on CPU tensors unless forced
    from ssgr.ops._registry import resolve

    assert resolve("sparsegpt", torch.device("cpu"))[0] != "triton"


@interp_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 3])
def test_hessian_vs_float64_oracle(seed, dtype, splits):
    from ssgr.kernels import hessian as K

    t, d = 333, 67  # partial tiles on both sides, partial token chunks
    X = torch.randn(t, d).to(dtype)
    H0 = torch.randn(d, d)
    H0 = H0 + H0.T
    H = H0.clone()
    K.hessian_accumulate(H, X, splits=splits)
    oracle = H0.double() + X.double().T @ X.double()
    R = H0.clone()
    hessian_accumulate(R, X, backend="reference")
    err_ref = (R.double() - oracle).abs().max().item()
    err = (H.double() - oracle).abs().max().item()
    assert err <= 2 * err_ref + 1e-6 * oracle.abs().max().item()
    assert torch.equal(H, H.T), "H must stay exactly symmetric"


@interp_only
def test_hessian_public_api_strided_and_streaming(seed):
    X = torch.randn(2, 150, 80)[..., ::2]  # non-contiguous, 3-D
    acc = HessianAccumulator(40, backend="triton")
    acc.add(X[0])
    acc.add(X[1, :7])
    acc.add(X[1, 7:])
    flat = X.reshape(-1, 40).double()
    torch.testing.assert_close(acc.hessian().double(), flat.T @ flat / 300, rtol=1e-5, atol=1e-5)
    with pytest.raises(BackendError, match="float64 oracle"):
        hessian_accumulate(torch.zeros(40, 40, dtype=torch.float64), X[0].double(),
                           backend="triton")


@interp_only
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (5, 16), (30, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nm_mask_equals_reference(seed, n, m, dtype):
    scores = torch.randn(37, 5 * m).to(dtype)
    keep = nm_mask(scores, n, m, backend="triton")
    assert keep.dtype == torch.bool
    assert torch.equal(keep, ref.nm_mask(scores, n, m))


@interp_only
def test_nm_mask_ties_and_strides():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0]])
    assert nm_mask(scores, 2, 4, backend="triton").tolist() == [
        [True, True, False, False, False, True, True, False]
    ]
    many = torch.randint(0, 3, (50, 128)).float()[:, ::2]  # ties, non-contiguous
    assert torch.equal(nm_mask(many, 2, 4, backend="triton"), ref.nm_mask(many, 2, 4))


@interp_only
@pytest.mark.parametrize("per", ["row", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_topk_mask_equals_reference(seed, per, sparsity, dtype):
    scores = torch.randn(23, 77).to(dtype)
    scores[0, :4] = -0.0  # signed zeros tie with +0.0, as in torch.sort
    scores[0, 4:8] = 0.0
    keep = topk_mask(scores, sparsity, per, backend="triton")
    k = int((77 if per == "row" else 23 * 77) * sparsity)
    assert torch.equal(keep, ref.topk_mask(scores, k, per))


@interp_only
def test_topk_ties_and_multi_program_path(seed):
    from ssgr.kernels import masks as K

    ties = torch.randint(0, 4, (31, 64)).float()
    assert torch.equal(topk_mask(ties, 0.5, backend="triton"), ref.topk_mask(ties, 32, "row"))
    s = torch.randint(0, 50, (3, 700)).float()  # the per-pass kernels over chunk ranges
    for k in (1, 350, 699):
        assert torch.equal(K.topk_mask(s, k, fused=False), ref.topk_mask(s, k, "row"))


# (rows, cols, blocksize, kwargs): partial last block, N:M with 2:4 / 4:8 / 1:4, unstructured
OBS_CASES = [
    (37, 100, 32, dict(sparsity=0.5)),
    (37, 100, 32, dict(n=2, m=4)),
    (29, 104, 32, dict(n=4, m=8)),
    (16, 96, 48, dict(n=1, m=4)),
    (20, 128, 128, dict(sparsity=0.7)),
]


@interp_only
@pytest.mark.parametrize("rows,cols,bs,kw", OBS_CASES)
def test_sparsegpt_equals_reference(seed, rows, cols, bs, kw):
    W = torch.randn(rows, cols)
    H = random_hessian(cols)
    r = sparsegpt_prune(W, H, blocksize=bs, backend="reference", **kw)
    out = sparsegpt_prune(W, H, blocksize=bs, backend="triton", **kw)
    assert_same_prune(out, r)
    assert bool((out.weight[~out.mask] == 0).all())
    if "n" in kw:
        assert bool((out.mask.reshape(rows, -1, kw["m"]).sum(-1) == kw["n"]).all())


@interp_only
@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(n=2, m=4)])
def test_sparsegpt_vs_float64_oracle(seed, kw):
    W = torch.randn(24, 128)
    H = random_hessian(128)
    oracle = sparsegpt_prune(W.double(), H.double(), blocksize=64, backend="reference", **kw)
    r32 = sparsegpt_prune(W, H, blocksize=64, backend="reference", **kw)
    out = sparsegpt_prune(W, H, blocksize=64, backend="triton", **kw)
    assert_same_prune(out, oracle, rtol=1e-3, atol=1e-3, loss_rel=None)
    rows = ~((out.mask != oracle.mask) | (r32.mask != oracle.mask)).any(1)
    err_ref = (r32.weight.double() - oracle.weight)[rows].abs().max().item()
    err = (out.weight.double() - oracle.weight)[rows].abs().max().item()
    assert err <= 2 * err_ref + 1e-6


@interp_only
def test_sparsegpt_bf16_ties_dead_columns_and_damping(seed, monkeypatch, caplog):
    # bf16 weights come back in bf16
    W = torch.randn(16, 64).bfloat16()
    H = random_hessian(64)
    out = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend="triton")
    r = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend="reference")
    assert out.weight.dtype == torch.bfloat16
    assert_same_prune(out, r, rtol=1e-2, atol=1e-2)
    # exact ties with a diagonal H: the pattern holds and kept weights are unchanged
    Wt = torch.randint(-2, 3, (24, 64)).float()
    res = sparsegpt_prune(Wt, torch.eye(64) * 2.0, n=4, m=8, blocksize=32, backend="triton")
    assert bool((res.mask.reshape(24, -1, 8).sum(-1) == 4).all())
    torch.testing.assert_close(res.weight[res.mask], Wt[res.mask])
    # dead columns are zeroed, the caller's H untouched
    X = torch.randn(200, 64)
    X[:, [3, 17, 40]] = 0
    Hd = X.T @ X
    res = sparsegpt_prune(torch.randn(20, 64), Hd, n=2, m=4, blocksize=32, backend="triton")
    assert bool((res.weight[:, [3, 17, 40]] == 0).all())
    assert torch.equal(Hd.diagonal()[[3, 17, 40]], torch.zeros(3))
    # an indefinite H needs damping 1.0; the retry is logged; SSGR_BACKEND forces triton
    Hi = random_hessian(32)
    Hi -= 0.3 * Hi.diagonal().mean() * torch.eye(32)
    monkeypatch.setenv("SSGR_BACKEND", "triton")
    res = sparsegpt_prune(torch.randn(8, 32), Hi, sparsity=0.5, blocksize=16)
    assert res.damping == pytest.approx(1.0) and "damping" in caplog.text
