"""Precision scoping (:mod:`ssgr.ops._precision`) and the launch scope of the GPU backends
(:func:`ssgr.ops._gpu.launch_scope`): a global TF32 / reduced float32 matmul setting neither leaks
into ssgr's GEMMs nor is changed by them, and every launch runs on its tensors' device.

On CPU, ``torch.set_float32_matmul_precision("medium")`` lets oneDNN multiply float32 matrices in
bfloat16 pieces where the CPU has bf16 instructions, so the bitwise tests below can fail here when
an op forgets the scope; the CUDA halves (TF32, two devices) are in test_gpu_ops.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from _util import random_hessian

from ssgr.errors import InputError
from ssgr.ops import _gpu, _precision, hessian_accumulate, sparsegpt_prune
from ssgr.ops._precision import fp32_settings, ieee_fp32

#: Global settings a user may have made before calling ssgr (applied by :func:`_apply`).
GLOBALS = ["default", "legacy-high", "legacy-medium", "allow_tf32", "mkldnn-bf16"]


def _apply(setting: str) -> None:
    if setting == "legacy-high":
        torch.set_float32_matmul_precision("high")
    elif setting == "legacy-medium":
        torch.set_float32_matmul_precision("medium")
    elif setting == "allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif setting == "mkldnn-bf16":
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"


@pytest.fixture
def restore_globals():
    """Puts torch's float32 GEMM settings back after the test, whatever it did."""
    saved = fp32_settings()
    yield
    _precision._set(saved)


def _legacy() -> str:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError as exc:  # torch refuses when the legacy and new APIs were mixed
        return f"raises: {exc}"[:40]


@pytest.mark.parametrize("setting", GLOBALS)
def test_scope_sets_ieee_and_restores_exactly(restore_globals, setting):
    _apply(setting)
    before, legacy = fp32_settings(), _legacy()
    with ieee_fp32():
        inside = fp32_settings()
        with ieee_fp32():  # nested: still IEEE, nothing restored yet
            assert fp32_settings() == inside
        assert fp32_settings() == inside
    assert set(inside.values()) <= {"ieee", False, "highest"}
    assert fp32_settings() == before
    assert _legacy() == legacy


def test_scope_restores_on_exception(restore_globals):
    torch.set_float32_matmul_precision("medium")
    before = fp32_settings()
    with pytest.raises(ZeroDivisionError), ieee_fp32():
        _ = 1 / 0
    assert fp32_settings() == before
    assert _precision._SCOPE.depth == 0


def test_concurrent_scopes_restore_once_the_last_leaves(restore_globals):
    torch.set_float32_matmul_precision("medium")
    before = fp32_settings()
    entered = threading.Barrier(3)
    release = threading.Event()
    seen: list[dict] = []

    def worker() -> None:
        with ieee_fp32():
            entered.wait(timeout=30)
            release.wait(timeout=30)
            seen.append(fp32_settings())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait(timeout=30)
    assert fp32_settings() != before  # both scopes open: IEEE
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == 2
    assert fp32_settings() == before
    assert _precision._SCOPE.depth == 0


def test_medium_is_observable_on_this_cpu(restore_globals):
    """Whether the bitwise tests below can see a missing scope on this machine: a plain fp32
    GEMM changes under "medium" where oneDNN has bf16 kernels (skipped, with the reason, where it
    does not)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 512, generator=g), torch.randn(512, 256, generator=g)
    exact = a @ b
    torch.set_float32_matmul_precision("medium")
    if torch.equal(a @ b, exact):
        pytest.skip("this CPU computes fp32 GEMMs identically under 'medium' (no oneDNN bf16)")
    with ieee_fp32():
        assert torch.equal(a @ b, exact)


@pytest.mark.parametrize("setting", ["legacy-medium", "legacy-high", "mkldnn-bf16"])
def test_cpu_ops_bitwise_equal_under_global_setting(seed, restore_globals, setting):
    X = torch.randn(700, 448)  # d > SYRK_BLOCK: the blocked SYRK's GEMMs
    W = torch.randn(96, 448)
    H = random_hessian(448)
    kw = dict(blocksize=128, backend="cpu")

    def run() -> tuple:
        Hx = torch.zeros(448, 448)
        hessian_accumulate(Hx, X, backend="cpu")
        un = sparsegpt_prune(W, H, sparsity=0.5, **kw)
        nm = sparsegpt_prune(W, H, n=2, m=4, **kw)
        return Hx, un.weight, un.mask, nm.weight, nm.mask

    plain = run()
    _apply(setting)
    before = fp32_settings()
    scoped = run()
    assert fp32_settings() == before  # the ops left the user's setting alone
    for a, b in zip(plain, scoped, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------ launch scope


class _Dev:
    """Anything with a ``device``: common_device reads nothing else."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


def test_common_device_names_every_tensor():
    a, b = torch.zeros(2), torch.zeros(2, device="meta")
    assert _gpu.common_device("op", a=a, b=None) == torch.device("cpu")
    with pytest.raises(InputError, match=r"op: all tensors must be on one device, got a on cpu, "
                       r"b on meta"):
        _gpu.common_device("op", a=a, b=b)
    with pytest.raises(InputError, match="no tensor"):
        _gpu.common_device("op", a=None)


def test_launch_scope_enters_the_tensors_cuda_device(monkeypatch, restore_globals):
    """The guard itself, without a GPU: torch.cuda.device is entered with the tensors' device
    (cuda:1, not the current device) and left again; the precision is IEEE inside."""
    calls: list[tuple[str, torch.device]] = []

    class Recorder:
        def __init__(self, device: torch.device) -> None:
            self.device = device

        def __enter__(self) -> None:
            calls.append(("enter", self.device))

        def __exit__(self, *exc: object) -> None:
            calls.append(("exit", self.device))

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    torch.set_float32_matmul_precision("medium")
    with _gpu.launch_scope("op", H=_Dev("cuda:1"), X=_Dev("cuda:1")) as dev:
        assert dev == torch.device("cuda", 1)
        assert calls == [("enter", torch.device("cuda", 1))]
        assert set(fp32_settings().values()) == {"ieee"}
    assert calls[-1] == ("exit", torch.device("cuda", 1))
    calls.clear()
    with _gpu.launch_scope("op", s=torch.zeros(1)):  # CPU (interpreter): no CUDA device entered
        pass
    assert calls == []
    with pytest.raises(InputError, match="H on cuda:0, X on cuda:1"), \
            _gpu.launch_scope("op", H=_Dev("cuda:0"), X=_Dev("cuda:1")):
        pass


def test_gpu_launchers_refuse_tensors_on_two_devices():
    """Checked before triton or ssgr._cuda is touched, so this runs anywhere."""
    from ssgr.ops.hessian import gpu as hgpu
    from ssgr.ops.sparsegpt import gpu as sgpu

    H, X = torch.zeros(8, 8), torch.zeros(4, 8, device="meta")
    for fn in (hgpu.hessian_triton, hgpu.hessian_cuda):
        with pytest.raises(InputError, match="H on cpu, X on meta"):
            fn(H, X)
    W = torch.zeros(4, 8, device="meta")
    with pytest.raises(InputError, match="W on meta, H on cpu"):
        sgpu.blocked_sparsegpt(W, H, 0.5, 0, 0, 8, 0.01, lambda *a: None)


_INTERPRETED = textwrap.dedent("""
    import contextlib
    import torch
    from ssgr.ops import _gpu, hessian_accumulate, nm_mask, sparsegpt_prune, topk_mask

    seen = []
    real = _gpu.launch_scope

    @contextlib.contextmanager
    def recording(what, **tensors):
        with real(what, **tensors) as dev:
            seen.append((what, str(dev)))
            yield dev

    _gpu.launch_scope = recording
    torch.manual_seed(0)
    X = torch.randn(64, 40)
    H = torch.zeros(40, 40)
    hessian_accumulate(H, X, backend="triton")
    s = torch.randn(8, 16)
    nm_mask(s, 2, 4, backend="triton")
    topk_mask(s, 0.5, "row", backend="triton")
    topk_mask(s, 0.5, "layer", backend="triton")
    W = torch.randn(8, 40)
    Hs = X.T @ X / 64 + torch.eye(40)
    plain = sparsegpt_prune(W, Hs, sparsity=0.5, blocksize=16, backend="triton")
    torch.set_float32_matmul_precision("medium")
    medium = sparsegpt_prune(W, Hs, sparsity=0.5, blocksize=16, backend="triton")
    assert torch.get_float32_matmul_precision() == "medium"
    assert torch.equal(plain.weight, medium.weight) and torch.equal(plain.mask, medium.mask)
    for what, dev in seen:
        print(what, dev)
""")


def test_triton_launchers_enter_the_launch_scope():
    """Under TRITON_INTERPRET=1 (a subprocess: the variable must be set before triton is
    imported) every triton launcher runs inside launch_scope on its tensors' device, and the
    triton SparseGPT host loop's GEMMs ignore a global "medium" precision."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SSGR_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRETED], cwd=Path(__file__).parent, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = set(proc.stdout.split("\n"))
    for what in ("hessian (triton)", "nm_mask (triton)", "topk_mask (triton)", "sparsegpt"):
        assert f"{what} cpu" in lines, proc.stdout
