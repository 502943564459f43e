"""sparsegpt_prune: reference == llm-compressor, every backend == reference, fp64 oracle, ties,
dead columns, ill-conditioned H, damping retries and bad input."""

from __future__ import annotations

import pytest
import torch
from _util import assert_same_prune, peer_sparsify, random_hessian

from ssgr.errors import InputError
from ssgr.ops import (
    BackendError,
    CholeskyError,
    SparseGPTResult,
    sparsegpt_prune,
    support_matrix,
)

FAST_BACKENDS = [b for b in ("cpu", "triton", "cuda") if support_matrix()["sparsegpt"][b] is None]

# (rows, cols, blocksize, kwargs, llm-compressor's (sparsity, prune_n, prune_m))
CASES = [
    (37, 100, 32, dict(sparsity=0.5), (0.5, 0, 0)),  # partial last block (4 columns)
    (37, 100, 32, dict(n=2, m=4), (0.0, 2, 4)),
    (29, 104, 32, dict(n=4, m=8), (0.0, 4, 4 * 2)),
    (16, 96, 48, dict(n=1, m=4), (0.0, 3, 4)),  # keep 1 of 4 = llm-compressor prune_n=3
    (64, 128, 128, dict(sparsity=0.7), (0.7, 0, 0)),
    (21, 120, 40, dict(n=3, m=5), (0.0, 2, 5)),  # a group size with no unrolled kernel
    (9, 128, 128, dict(n=16, m=64), (0.0, 48, 64)),  # a group ranked by a sort
]


def _check_pattern(mask: torch.Tensor, kw: dict, blocksize: int) -> None:
    if "n" in kw:
        groups = mask.reshape(mask.shape[0], -1, kw["m"]).sum(-1)
        assert bool((groups == kw["n"]).all()), "N:M: exactly n kept in every group of m"
    else:
        for i1 in range(0, mask.shape[1], blocksize):
            blk = mask[:, i1 : i1 + blocksize]
            assert int((~blk).sum()) >= int(blk.numel() * kw["sparsity"]) + 1


@pytest.mark.peer
@pytest.mark.parametrize("rows,cols,bs,kw,peer", CASES)
def test_reference_equals_llmcompressor(seed, rows, cols, bs, kw, peer):
    W = torch.randn(rows, cols)
    H = random_hessian(cols)
    Qp, lp = peer_sparsify(W, H, *peer, blocksize=bs)
    res = sparsegpt_prune(W, H, blocksize=bs, backend="reference", **kw)
    torch.testing.assert_close(res.weight, Qp, rtol=0, atol=0)
    assert res.loss == pytest.approx(lp, rel=1e-6)
    assert res.damping == 0.01
    _check_pattern(res.mask, kw, bs)
    # pruned exactly where the mask says so (a kept weight may be 0 only by accident)
    assert bool((res.weight[~res.mask] == 0).all())


@pytest.mark.peer
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("rows,cols,bs,kw,peer", CASES)
def test_backend_equals_llmcompressor(seed, backend, rows, cols, bs, kw, peer):
    W = torch.randn(rows, cols)
    H = random_hessian(cols)
    Qp, lp = peer_sparsify(W, H, *peer, blocksize=bs)
    res = sparsegpt_prune(W, H, blocksize=bs, backend=backend, **kw)
    # the peer returns no mask: a kept weight can be 0 by accident in both
    peer = SparseGPTResult(Qp, Qp != 0, lp, 0.01)
    assert_same_prune(res._replace(mask=res.mask & (res.weight != 0)), peer)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols,bs,kw,peer", CASES)
def test_backend_equals_reference(seed, backend, dtype, rows, cols, bs, kw, peer):
    W = torch.randn(rows, cols).to(dtype)
    H = random_hessian(cols)
    ref = sparsegpt_prune(W, H, blocksize=bs, backend="reference", **kw)
    out = sparsegpt_prune(W, H, blocksize=bs, backend=backend, **kw)
    assert out.weight.dtype == dtype and out.mask.dtype == torch.bool
    tol = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert_same_prune(out, ref, rtol=tol, atol=tol)
    _check_pattern(out.mask, kw, bs)


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(n=2, m=4)])
def test_error_vs_float64_oracle(seed, backend, kw):
    """fp32 error against the float64 oracle is no worse than 2x the fp32 reference's."""
    W = torch.randn(48, 256)
    H = random_hessian(256)
    oracle = sparsegpt_prune(W.double(), H.double(), blocksize=64, backend="reference", **kw)
    ref32 = sparsegpt_prune(W, H, blocksize=64, backend="reference", **kw)
    out = sparsegpt_prune(W, H, blocksize=64, backend=backend, **kw)
    assert_same_prune(out, oracle, rtol=1e-3, atol=1e-3, loss_rel=None)
    rows = ~((out.mask != oracle.mask) | (ref32.mask != oracle.mask)).any(1)
    err_ref = (ref32.weight.double() - oracle.weight)[rows].abs().max().item()
    err = (out.weight.double() - oracle.weight)[rows].abs().max().item()
    assert err <= 2 * err_ref + 1e-6
    assert abs(out.loss - oracle.loss) <= 2 * abs(ref32.loss - oracle.loss) + 1e-6 * oracle.loss


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(n=2, m=4), dict(n=4, m=8)])
def test_ties_keep_the_pattern(seed, backend, kw):
    """Many exactly equal weights and a diagonal H: the pattern still holds exactly."""
    W = torch.randint(-2, 3, (24, 64)).float()
    H = torch.eye(64) * 2.0
    res = sparsegpt_prune(W, H, blocksize=32, backend=backend, **kw)
    _check_pattern(res.mask, kw, 32)
    # with H diagonal there is no compensation: kept weights are unchanged
    torch.testing.assert_close(res.weight[res.mask], W[res.mask])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_weight(seed, backend):
    """A transposed or strided view of W gives the same result as its contiguous copy."""
    base = torch.randn(96, 40)
    W = base.T  # [40, 96], column-major
    H = random_hessian(96)
    ref = sparsegpt_prune(W.contiguous(), H, n=2, m=4, blocksize=32, backend="reference")
    out = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend=backend)
    assert_same_prune(out, ref)
    strided = torch.randn(40, 192)[:, ::2]
    out = sparsegpt_prune(strided, H, sparsity=0.5, blocksize=32, backend=backend)
    ref = sparsegpt_prune(strided.contiguous(), H, sparsity=0.5, blocksize=32,
                          backend="reference")
    assert_same_prune(out, ref)


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_dead_columns(seed, backend):
    W = torch.randn(20, 64)
    X = torch.randn(200, 64)
    X[:, [3, 17, 40]] = 0  # inputs that never fire
    H = X.T @ X
    res = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend=backend)
    assert bool((res.weight[:, [3, 17, 40]] == 0).all())
    assert torch.equal(H.diagonal()[[3, 17, 40]], torch.zeros(3))  # caller's H untouched
    ref = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend="reference")
    assert_same_prune(res, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_sparsity_zero_is_the_dense_weight(seed, backend):
    """#18 item 2: sparsity=0 prunes nothing and compensates nothing (dead columns included):
    the weights come back bitwise unchanged, mask all True, loss 0."""
    W = torch.randn(64, 256)
    X = torch.randn(300, 256)
    X[:, 5] = 0  # a dead input: zeroed by SparseGPT when it prunes, but nothing is pruned here
    res = sparsegpt_prune(W, X.T @ X, sparsity=0.0, backend=backend)
    assert torch.equal(res.weight, W) and bool(res.mask.all())
    assert res.loss == 0.0 and res.damping == 0.0
    assert res.weight.data_ptr() != W.data_ptr()  # a copy, as for any other sparsity


@pytest.mark.parametrize("dead,warned", [(64, True), (40, True), (8, False)])
def test_more_dead_inputs_than_the_pattern_prunes_warns(seed, caplog, dead, warned):
    """#18 item 4: an all-zero Hessian (dead module) zeroes every weight; the op says so once,
    as it does when dead columns alone exceed the 50% target (40 of 64), and not for a few."""
    W = torch.randn(8, 64)
    X = torch.randn(100, 64)
    X[:, :dead] = 0
    with caplog.at_level("WARNING", logger="ssgr.ops.sparsegpt"):
        res = sparsegpt_prune(W, X.T @ X, sparsity=0.5, blocksize=32)
    msgs = [r.getMessage() for r in caplog.records if "never fired" in r.getMessage()]
    assert len(msgs) == (1 if warned else 0), msgs
    if dead == 64:
        assert not bool(res.mask.any()) and bool((res.weight == 0).all())


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
@pytest.mark.parametrize("sparsity", [1e-6, 0.003])
def test_block_share_rounding_to_zero_prunes_nothing(seed, backend, sparsity):
    """Sibling of sparsity=0: a fraction whose per-block count int(numel * sparsity) is 0 prunes
    no weight (llm-compressor's k+1 rule would prune the smallest of each block), while a block
    whose count is positive keeps that rule. 16 x 128 blocks: 2048 weights, so 1e-6 gives 0 in
    every block and 0.003 gives 6 in the full blocks and 0 in the 16 x 8 last block."""
    W = torch.randn(16, 264)
    H = random_hessian(264)
    res = sparsegpt_prune(W, H, sparsity=sparsity, blocksize=128, backend=backend)
    pruned = [int((~res.mask[:, i1 : i1 + 128]).sum()) for i1 in range(0, 264, 128)]
    full = int(16 * 128 * sparsity)
    assert pruned[:2] == ([0, 0] if full == 0 else [full + 1, full + 1]) and pruned[2] == 0
    if full == 0:
        torch.testing.assert_close(res.weight, W, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_rank_deficient_hessian_is_damped(seed, backend):
    """Fewer tokens than inputs: H is singular, damping alone makes it work."""
    X = torch.randn(16, 96)
    W = torch.randn(12, 96)
    res = sparsegpt_prune(W, X.T @ X, sparsity=0.5, blocksize=32, backend=backend)
    assert res.damping == 0.01 and torch.isfinite(res.weight).all()


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_indefinite_hessian_retries_with_more_damping(seed, backend, caplog):
    c = 32
    H = random_hessian(c)
    H -= 0.3 * H.diagonal().mean() * torch.eye(c)  # negative eigenvalues: fails at 0.01 and 0.1
    evals = torch.linalg.eigvalsh(H)
    assert evals.min() < -0.11 * H.diagonal().mean()  # really needs damping 1.0
    W = torch.randn(8, c)
    res = sparsegpt_prune(W, H, sparsity=0.5, blocksize=16, backend=backend)
    assert res.damping == pytest.approx(1.0)
    assert "damping" in caplog.text
    with pytest.raises(CholeskyError, match="damping 0.01, 0.1, 1, 10"):
        sparsegpt_prune(W, -torch.eye(c), sparsity=0.5, backend=backend)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(W=torch.randn(4, 8), H=torch.eye(6), sparsity=0.5), r"H must be \[c, c\] = \[8, 8\]"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8).half(), sparsity=0.5), "float32"),
        (dict(W=torch.randint(0, 3, (4, 8)), H=torch.eye(8), sparsity=0.5), "W has dtype"),
        (dict(W=torch.randn(8), H=torch.eye(8), sparsity=0.5), "W must be 2-D"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), sparsity=1.0), r"\[0, 1\)"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), sparsity=-0.1), r"\[0, 1\)"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8)), "give either sparsity"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), sparsity=0.5, n=2, m=4), "not both"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), n=4, m=4), "0 < n < m"),
        (dict(W=torch.randn(4, 10), H=torch.eye(10), n=2, m=4), "not divisible by m=4"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), n=2, m=4, blocksize=6), "multiple of m=4"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), sparsity=0.5, blocksize=0), "blocksize"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8), sparsity=0.5, percdamp=0), "percdamp"),
        (dict(W=torch.full((4, 8), float("nan")), H=torch.eye(8), sparsity=0.5),
         "W has 32 NaN/Inf"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8) * float("inf"), sparsity=0.5),
         "H has .* NaN/Inf"),
        (dict(W=torch.randn(4, 8), H=torch.eye(8, device="meta"), sparsity=0.5), "one device"),
    ],
)
def test_bad_input(kwargs, match):
    W, H = kwargs.pop("W"), kwargs.pop("H")
    with pytest.raises(InputError, match=match):
        sparsegpt_prune(W, H, **kwargs)


def test_forced_backend_errors(monkeypatch):
    W, H = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(BackendError, match="not a backend"):
        sparsegpt_prune(W, H, sparsity=0.5, backend="fast")
    if support_matrix()["sparsegpt"]["cuda"] is not None:
        with pytest.raises(BackendError, match="'cuda'"):
            sparsegpt_prune(W, H, sparsity=0.5, backend="cuda")
    monkeypatch.setenv("SSGR_BACKEND", "nonsense")
    with pytest.raises(BackendError, match="SSGR_BACKEND='nonsense'"):
        sparsegpt_prune(W, H, sparsity=0.5)


def test_env_backend_is_strict(monkeypatch):
    """SSGR_BACKEND forces the backend; an unavailable one is an error, not a fallback."""
    from ssgr.ops import _registry

    W, H = torch.randn(4, 8), torch.eye(8)
    monkeypatch.setenv("SSGR_BACKEND", "cpu")
    _registry._load_backends()
    monkeypatch.setattr(_registry._REG.impls["sparsegpt"]["cpu"], "probe",
                        lambda: "pretend the build is missing")
    with pytest.raises(BackendError, match="unavailable .*pretend the build is missing"):
        sparsegpt_prune(W, H, sparsity=0.5)
    monkeypatch.setenv("SSGR_BACKEND", "reference")
    assert sparsegpt_prune(W, H, sparsity=0.5).mask.shape == (4, 8)


# ------------------------------------------------------------------ the cpu backend's own parts


def _kthvalue_prune(W1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference rule: prune every ``w^2 / d^2 <=`` the ``int(numel * sparsity)``-th
    smallest (0-based)."""
    tmp = W1**2 / (d.reshape(1, -1)) ** 2
    k = int(tmp.numel() * sparsity)
    return tmp <= torch.kthvalue(tmp.flatten(), k + 1).values


@pytest.mark.skipif(support_matrix()["sparsegpt"]["cpu"] is not None, reason="no cpu backend")
@pytest.mark.parametrize("rows,count,ld",
                         [(37, 100, 100), (16, 128, 300), (1, 5, 5), (300, 128, 128)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.999])
@pytest.mark.parametrize("values", ["normal", "ties", "zeros"])
def test_cpu_block_prune_mask_equals_kthvalue(seed, rows, count, ld, sparsity, values):
    """The radix-select threshold of the cpu backend's unstructured block mask prunes exactly
    what a kthvalue threshold prunes: ties (which prune more), zeros, a strided W, k = 0."""
    from ssgr.ops import _native

    base = torch.randn(rows, ld)
    if values == "ties":
        base = torch.randint(-3, 4, (rows, ld)).float()
    elif values == "zeros":
        base[torch.rand(rows, ld) < 0.6] = 0.0
    W1 = base[:, :count]  # row stride ld
    U = torch.eye(count) * (0.5 + torch.rand(count))
    if values == "ties":
        U = torch.eye(count) * torch.randint(1, 3, (count,)).float()
    prune = torch.empty(rows, count, dtype=torch.uint8)
    k = int(rows * count * sparsity)
    _native.block_prune_mask(W1, U, k, prune)
    expected = _kthvalue_prune(W1, U.diagonal(), sparsity)
    assert torch.equal(prune.bool(), expected)
    assert int(prune.sum()) >= k + 1


@pytest.mark.skipif(support_matrix()["sparsegpt"]["cpu"] is not None, reason="no cpu backend")
def test_cpu_backend_without_inplace_lapack(seed, monkeypatch):
    """Where torch's library exports no ``spotrf_`` / ``dpotrf_`` the cpu backend factors with
    torch.linalg.cholesky and gets the same result, with either factor precision."""
    from ssgr.ops import _native

    W = torch.randn(40, 96)
    H = random_hessian(96)
    for factor in ("float64", "float32"):
        monkeypatch.setenv("SSGR_SPARSEGPT_FACTOR", factor)
        fast = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend="cpu")
        with monkeypatch.context() as m:
            m.setattr(_native, "_spotrf", lambda: None)
            m.setattr(_native, "_dpotrf", lambda: None)
            slow = sparsegpt_prune(W, H, n=2, m=4, blocksize=32, backend="cpu")
        assert_same_prune(slow, fast, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(support_matrix()["sparsegpt"]["cpu"] is not None, reason="no cpu backend")
@pytest.mark.parametrize("rows,cols,bs,kw,peer", CASES)
def test_cpu_float32_factor_equals_reference(seed, monkeypatch, rows, cols, bs, kw, peer):
    """``SSGR_SPARSEGPT_FACTOR=float32`` (the cpu backend's float32 Cholesky, ``spotrf``) is still
    SparseGPT: equal to the reference up to near-ties, the pattern kept."""
    monkeypatch.setenv("SSGR_SPARSEGPT_FACTOR", "float32")
    W = torch.randn(rows, cols)
    H = random_hessian(cols)
    ref = sparsegpt_prune(W, H, blocksize=bs, backend="reference", **kw)
    out = sparsegpt_prune(W, H, blocksize=bs, backend="cpu", **kw)
    assert_same_prune(out, ref, rtol=1e-4, atol=1e-4)
    _check_pattern(out.mask, kw, bs)


@pytest.mark.skipif(support_matrix()["sparsegpt"]["cpu"] is not None, reason="no cpu backend")
@pytest.mark.parametrize("c", [37, 300])
def test_cpu_factor_is_the_rounded_float64_factor(seed, monkeypatch, c):
    """The cpu backend's default factor is the float64 Cholesky of the flipped, damped H rounded
    to float32 (within one float32 ulp of it, entry by entry); the float32 factor
    (``SSGR_SPARSEGPT_FACTOR=float32``) is not, on an undamped-like ill-conditioned H."""
    from ssgr.ops.sparsegpt.cpu import _flipped_cholesky

    monkeypatch.delenv("SSGR_SPARSEGPT_FACTOR", raising=False)
    H = random_hessian(c)
    damp = 1e-6 * H.diagonal().mean()  # cond(H + damp I) up to ~1e6
    Hd = H.double().flip(0, 1)
    Hd.diagonal().add_(damp.double())
    L64 = torch.linalg.cholesky(Hd)
    eps = torch.finfo(torch.float32).eps
    slack = 1e-12 * L64.abs().max()  # float64 rounding of two LAPACK calls
    L = _flipped_cholesky(H.contiguous(), damp).tril().double()
    assert bool(((L - L64).abs() <= eps * L64.abs() + slack).all())
    L32 = _flipped_cholesky(H.contiguous(), damp, torch.float32).tril().double()
    rel32 = ((L32 - L64).abs() / (L64.abs() + slack)).max().item()
    assert rel32 > 4 * eps, rel32


@pytest.mark.parametrize("block", [16, 2048])
@pytest.mark.parametrize("c", [37, 300])
def test_gpu_inverse_factor_is_the_rounded_float64_factor(seed, monkeypatch, c, block):
    """The GPU backends' host loop (device-agnostic torch, run here on CPU tensors) gets U, the
    upper Cholesky factor of ``(H + damp I)^-1``, as ``T^-1`` by column blocks of
    ``INVERSE_BLOCK`` (16: three blocks and a partial one at c=37), in float64 then rounded:
    within one float32 ulp of the float64 U entry by entry (its strict lower triangle exactly
    0). The float32 factor (``SSGR_SPARSEGPT_FACTOR=float32``) is not, on an ill-conditioned H."""
    from ssgr.ops.sparsegpt import gpu
    from ssgr.ops.sparsegpt.reference import inverse_hessian_factor

    monkeypatch.setattr(gpu, "INVERSE_BLOCK", block)
    H = random_hessian(c)
    damp = 1e-6 * H.diagonal().mean()
    Hd = H.double()
    Hd.diagonal().add_(damp.double())
    U64 = inverse_hessian_factor(Hd)
    eps = torch.finfo(torch.float32).eps
    slack = 1e-10 * U64.abs().max()  # float64 rounding of two routes to U
    U = gpu._inverse_factor_flipped(H, damp)
    assert U.dtype == torch.float32 and U.is_contiguous()
    assert bool((U.tril(-1) == 0).all())
    assert bool(((U.double() - U64).abs() <= eps * U64.abs() + slack).all())
    U32 = gpu._inverse_factor_flipped(H, damp, torch.float32).double()
    rel32 = ((U32 - U64).abs() / (U64.abs() + slack)).max().item()
    assert rel32 > 4 * eps, rel32


def test_cpu_factor_env_rejects_other_values(monkeypatch):
    monkeypatch.setenv("SSGR_SPARSEGPT_FACTOR", "fp16")
    with pytest.raises(InputError, match="SSGR_SPARSEGPT_FACTOR='fp16'.*float64.*float32"):
        sparsegpt_prune(torch.randn(8, 16), random_hessian(16), sparsity=0.5, backend="cpu")


@pytest.mark.skipif(support_matrix()["sparsegpt"]["cpu"] is not None, reason="no cpu backend")
@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_flip2d(seed, n, dtype):
    """The cpu backend's flipped copy of H is ``torch.flip(H, (0, 1))`` in ``dtype``, bit for
    bit."""
    from ssgr.ops import _native

    H = torch.randn(n, n)
    out = _native.flip2d(H, dtype)
    assert out.dtype == dtype and torch.equal(out, H.flip(0, 1).to(dtype))
