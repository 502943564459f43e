"""The first-use self-check (a broken implementation is caught, logged once, skipped by automatic
dispatch, refused when forced; a correct one is checked once) and ``ssgr selftest``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssgr.ops import (
    BackendError,
    _registry,
    hessian_accumulate,
    nm_mask,
    selftest,
    sparsegpt_prune,
    support_matrix,
)
from ssgr.ops import reference as ref

ROOT = Path(__file__).resolve().parents[2]
needs_cpu = pytest.mark.skipif(support_matrix()["nm_mask"]["cpu"] is not None,
                               reason="the cpu backend (ssgr._C) is not built")


@pytest.fixture(autouse=True)
def _checks_on(monkeypatch):
    monkeypatch.delenv(_registry.SELFCHECK_ENV, raising=False)
    monkeypatch.delenv("SSGR_BACKEND", raising=False)


def _cpu_fn(op):
    return _registry.implementation(op, "cpu").fn


def _errors(caplog):
    return [r for r in caplog.records
            if r.levelno == logging.ERROR and r.name == "ssgr.ops._registry"]


@needs_cpu
def test_broken_mask_is_caught_logged_once_and_skipped(caplog):
    real = _cpu_fn("nm_mask")

    def broken(scores, n, m):
        keep = real(scores, n, m).clone()
        keep[0, :m] = ~keep[0, :m]  # one group wrong
        return keep

    s = torch.randn(8, 64)
    with caplog.at_level(logging.ERROR), _registry.substituted("nm_mask", "cpu", fn=broken):
        assert _registry.resolve("nm_mask", "cpu", None, dtype=torch.float32)[0] == "reference"
        assert torch.equal(nm_mask(s, 2, 4), ref.nm_mask(s, 2, 4))  # the reference ran
        assert torch.equal(nm_mask(s, 2, 4), ref.nm_mask(s, 2, 4))
        with pytest.raises(BackendError, match="self-check failed.*differ from the reference"):
            nm_mask(s, 2, 4, backend="cpu")
        errs = _errors(caplog)
        assert len(errs) == 1, [r.getMessage() for r in errs]
        msg = errs[0].getMessage()
        for part in ("op=nm_mask", "backend=cpu", "device=cpu", "dtype=float32", "error="):
            assert part in msg, msg
        key = ("nm_mask", "cpu", "cpu", "float32")
        assert _registry.self_check_results()[key] is not None
        # another dtype is another check (and fails again: one more ERROR line)
        nm_mask(s.double(), 2, 4)
        assert len(_errors(caplog)) == 2
    # leaving the substitution restores the real implementation and its (passed) state
    assert _registry.self_check_results().get(key) is None


@needs_cpu
def test_broken_sparsegpt_weights_are_caught(caplog):
    real = _cpu_fn("sparsegpt")

    def off_by_a_little(W, H, *args):
        Q, keep, loss, damping = real(W, H, *args)
        Q = Q.clone()
        Q[:, -1] *= 1.001  # the last column's compensation is wrong by 0.1%
        return Q, keep, loss, damping

    W, H = torch.randn(8, 64), torch.eye(64) + 0.1
    with caplog.at_level(logging.ERROR), \
            _registry.substituted("sparsegpt", "cpu", fn=off_by_a_little):
        out = sparsegpt_prune(W, H, sparsity=0.5)
        want = sparsegpt_prune(W, H, sparsity=0.5, backend="reference")
        assert torch.equal(out.weight, want.weight)
        (err,) = _errors(caplog)
        assert "op=sparsegpt backend=cpu" in err.getMessage()
        assert "weight error" in err.getMessage()


@needs_cpu
def test_crash_is_caught_and_forced_raises(caplog):
    def crashes(H, X):
        raise RuntimeError("pretend kernel launch failure")

    H, X = torch.zeros(16, 16), torch.randn(4, 16)
    with caplog.at_level(logging.ERROR), _registry.substituted("hessian", "cpu", fn=crashes):
        hessian_accumulate(H, X)  # the reference takes it
        torch.testing.assert_close(H, X.T @ X)
        with pytest.raises(BackendError, match="crashed: RuntimeError: pretend kernel launch"):
            hessian_accumulate(H, X, backend="cpu")
        (err,) = _errors(caplog)
        assert "crashed" in err.getMessage()


@needs_cpu
def test_correct_implementation_passes_and_is_checked_once(monkeypatch, caplog):
    calls = []
    real_check = selftest.check_implementation

    def counting(op, fn, ref_fn, device, dtype, size="small"):
        calls.append((op, str(dtype)))
        return real_check(op, fn, ref_fn, device, dtype, size)

    monkeypatch.setattr(selftest, "check_implementation", counting)
    s = torch.randn(8, 64)
    with caplog.at_level(logging.ERROR), \
            _registry.substituted("nm_mask", "cpu", fn=_cpu_fn("nm_mask")):
        for _ in range(3):
            nm_mask(s, 2, 4)
        nm_mask(s, 2, 4, backend="cpu")
        assert calls == [("nm_mask", "torch.float32")]
        nm_mask(s.bfloat16(), 2, 4)
        assert calls == [("nm_mask", "torch.float32"), ("nm_mask", "torch.bfloat16")]
        assert _registry.self_check_results()[("nm_mask", "cpu", "cpu", "bfloat16")] is None
    assert not _errors(caplog)


@needs_cpu
def test_selfcheck_off_by_environment(monkeypatch):
    def wrong(scores, n, m):
        return torch.zeros(scores.shape, dtype=torch.bool)

    monkeypatch.setenv(_registry.SELFCHECK_ENV, "0")
    s = torch.randn(4, 8)
    with _registry.substituted("nm_mask", "cpu", fn=wrong):
        assert not nm_mask(s, 2, 4).any()  # unchecked: the broken one runs


def test_check_runs_the_reference_directly_and_keeps_the_rng():
    """The check of an op never dispatches (no recursion) and does not move the global RNG."""
    state = torch.random.get_rng_state()
    for op in selftest.CHECKED_OPS:
        impl = _registry.implementation(op, "reference")
        res = selftest.check_implementation(op, impl.fn, impl.fn, "cpu", torch.float32)
        assert res.ok, res.detail
    assert torch.equal(state, torch.random.get_rng_state())


def test_check_flags_a_mask_off_by_one_tie():
    """Exact equality for the mask ops: a tie broken the wrong way is a failure."""
    def upper_tie(scores, n, m):  # ties keep the higher column instead of the lower
        r, c = scores.shape
        flipped = scores.reshape(r, c // m, m).flip(-1).reshape(r, c)
        return ref.nm_mask(flipped, n, m).reshape(r, c // m, m).flip(-1).reshape(r, c)

    res = selftest.check_implementation("nm_mask", upper_tie, ref.nm_mask, "cpu", torch.float32)
    assert not res.ok and "differ from the reference" in res.detail


def test_near_tie_rule():
    assert selftest.near_tie_allowed(100) == 2
    assert selftest.near_tie_allowed(10**6) == 100


@needs_cpu
def test_selfcheck_cost_is_small():
    """The first-use checks of every cpu implementation at float32 cost well under a second of
    work (measured as CPU time of this process: the machine may be shared)."""
    t0 = time.process_time()
    for op in selftest.CHECKED_OPS:
        res = selftest.check_implementation(op, _cpu_fn(op),
                                            _registry.implementation(op, "reference").fn,
                                            "cpu", torch.float32)
        assert res.ok, res.detail
    assert time.process_time() - t0 < 2.0 * max(1, torch.get_num_threads())


# ------------------------------------------------------------------------------- ssgr selftest


@needs_cpu
def test_selftest_small_on_cpu_passes(capsys):
    t0 = time.perf_counter()
    rc = selftest.run_selftest(selftest.SelftestConfig(device="cpu"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert time.perf_counter() - t0 < 30
    for op in selftest.CHECKED_OPS:
        assert f"\n{op}" in out
    assert "sparsegpt  cpu      cpu     float64" in out and "skip" in out  # fp64: reference's
    assert " 0 failed" in out


@needs_cpu
def test_selftest_fails_on_a_broken_backend(capsys):
    real = _cpu_fn("topk_mask")

    def broken(scores, n_prune, per):
        return real(scores, max(0, n_prune - 1), per)

    with _registry.substituted("topk_mask", "cpu", fn=broken):
        rc = selftest.run_selftest(selftest.SelftestConfig(device="cpu", ops=["topk_mask"],
                                                           dtypes=["float32"]))
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out and "1 failed" in out


def test_selftest_rejects_bad_options():
    from ssgr.errors import InputError

    with pytest.raises(InputError, match="unknown op"):
        selftest.selftest_rows(selftest.SelftestConfig(device="cpu", ops=["nope"]))
    with pytest.raises(InputError, match="not a torch device"):
        selftest.selftest_rows(selftest.SelftestConfig(device="gpu7"))


@needs_cpu
def test_selftest_command_line():
    env = {k: v for k, v in os.environ.items() if k not in ("SSGR_BACKEND", "TRITON_INTERPRET")}
    proc = subprocess.run(
        [sys.executable, "-m", "ssgr.ops.selftest", "--device", "cpu", "--op", "nm_mask",
         "topk_mask", "--dtype", "float32", "bfloat16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 checks, 0 failed" in proc.stdout, proc.stdout


def test_selftest_registers_a_subcommand():
    import argparse

    p = argparse.ArgumentParser()
    selftest.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["selftest", "--device", "cpu", "--op", "hessian", "--sizes", "small"])
    cfg = selftest.SelftestConfig(**{k: getattr(args, k) for k in
                                     ("device", "ops", "backends", "dtypes", "sizes")})
    assert cfg.ops == ["hessian"] and cfg.sizes == "small" and args.func is selftest.run
