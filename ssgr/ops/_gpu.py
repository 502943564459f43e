"""Loaders and probes of the two GPU backends, shared by every op's ``gpu.py``.

``triton``: the kernels in ``ssgr.kernels`` (source ``kernels/``, one module per op). Available
when triton imports and either a CUDA device exists or ``TRITON_INTERPRET=1`` was set before
triton was imported (then the kernels also accept CPU tensors, run by triton's numpy interpreter:
slow, for CI at small shapes). On CPU tensors the normal dispatch never picks triton
(``cpu > reference``); force it with ``backend="triton"`` or ``SSGR_BACKEND=triton``.

``cuda``: the extension ``ssgr._cuda`` built from csrc/*.cu and csrc/cuda_ops.cpp by setup.py
where torch has CUDA and nvcc is found; available when it imports and a CUDA device exists.

Importing this module imports neither triton, the kernels nor ``ssgr._cuda``; the probes do,
once, and only when the backend could run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import torch

from ssgr.errors import InputError

from ._precision import ieee_fp32

#: The Triton kernel modules, one per op (``ssgr.kernels.<op>``).
TRITON_MODULES = ("hessian", "sparsegpt", "masks")


def common_device(what: str, **tensors: torch.Tensor | None) -> torch.device:
    """The one device of the named tensors (None entries are skipped).

    ``what`` names the call in the message. Raises :class:`ssgr.errors.InputError` naming every
    tensor and its device when they are not all on one device (a kernel launched with pointers
    of two devices would read another device's memory).
    """
    named = {name: t for name, t in tensors.items() if t is not None}
    if not named:
        raise InputError(f"{what}: no tensor given")
    devices = {t.device for t in named.values()}
    if len(devices) != 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in named.items())
        raise InputError(f"{what}: all tensors must be on one device, got {where}")
    return devices.pop()


@contextlib.contextmanager
def launch_scope(what: str, **tensors: torch.Tensor | None) -> Iterator[torch.device]:
    """Context of every GPU launch of ssgr: the tensors' one device (:func:`common_device`) made
    the current CUDA device (``torch.cuda.device``), so a kernel on ``cuda:1`` tensors launches on
    ``cuda:1`` on that device's current stream, whatever the current device was; and IEEE float32
    GEMMs for the torch products inside (:func:`ssgr.ops._precision.ieee_fp32`). On CPU tensors
    (triton's interpreter) only the precision is scoped. Yields the device; restores the previous
    current device and precision on exit. Raises InputError for tensors on several devices.
    """
    device = common_device(what, **tensors)
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(torch.cuda.device(device))
        stack.enter_context(ieee_fp32())
        yield device


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _load_triton() -> tuple[dict[str, ModuleType] | None, str | None]:
    if not (torch.cuda.is_available() or _interpret_env()):
        return None, (
            "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernels "
            "on CPU tensors in triton's interpreter)"
        )
    try:
        mods = {
            name: importlib.import_module(f"ssgr.kernels.{name}") for name in TRITON_MODULES
        }
    except ImportError as exc:
        return None, f"triton is not importable ({exc}); pip install triton"
    if not torch.cuda.is_available():
        # @triton.jit reads TRITON_INTERPRET when the kernel module is imported: kernels imported
        # before it was set would try to compile for a GPU that is not there
        kern = mods["sparsegpt"]._obs_block_kernel
        if type(kern).__name__ != "InterpretedFunction":
            return None, (
                "ssgr.kernels was imported before TRITON_INTERPRET=1 was set; set it before "
                "the first import"
            )
    return mods, None


def triton_probe() -> str | None:
    """None when the triton backend can run here, else why not."""
    return _load_triton()[1]


def triton_devices() -> tuple[str, ...]:
    """Device types the triton kernels accept: cuda, and cpu under the interpreter."""
    return ("cuda", "cpu") if _interpret_env() else ("cuda",)


def triton_kernels(op: str) -> ModuleType:
    """The kernel module ``ssgr.kernels.<op>`` (call only after :func:`triton_probe` returned
    None; raises RuntimeError with its reason otherwise)."""
    mods, reason = _load_triton()
    if mods is None:
        raise RuntimeError(reason)
    return mods[op]


@functools.cache
def _load_cuda() -> tuple[ModuleType | None, str | None]:
    try:
        from ssgr import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, (
            f"the CUDA extension ssgr._cuda is not built ({exc}); on a machine with nvcc and a "
            "CUDA torch run `TORCH_CUDA_ARCH_LIST=9.0a pip install --no-build-isolation "
            "--no-deps -e .` (or `make gpu`)"
        )
    return _cuda, None


def cuda_probe() -> str | None:
    """None when ``ssgr._cuda`` imports and a CUDA device exists, else why not."""
    reason = _load_cuda()[1]
    if reason is not None:
        return reason
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def cuda_lib() -> ModuleType:
    """The loaded ``ssgr._cuda`` module (call only after :func:`cuda_probe` returned None;
    raises RuntimeError with the reason otherwise)."""
    mod, reason = _load_cuda()
    if mod is None:
        raise RuntimeError(reason)
    return mod
