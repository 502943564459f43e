"""Full-precision float32 GEMMs inside ssgr's ops, whatever the caller set globally.

A training script often enables TF32 (``torch.backends.cuda.matmul.allow_tf32 = True``) or
reduced-precision float32 products (``torch.set_float32_matmul_precision("high" | "medium")``):
cuBLAS then multiplies float32 matrices with 10-bit mantissas (TF32), and oneDNN on CPU with
bfloat16 pieces. ssgr's float32 GEMMs (the trailing OBS update and the per-block ``W1`` product of
SparseGPT, the float32 Hessian ``X^T X``) would silently inherit that loss of precision. IST's
SparseGPT code avoids it by switching TF32 off at import, a global side effect; ssgr instead
scopes the precision around each op with :func:`ieee_fp32`, and restores the caller's setting on
exit.

The settings are torch's per-backend float32 precisions (torch >= 2.9:
``torch.backends.cuda.matmul.fp32_precision`` and ``torch.backends.mkldnn.matmul.fp32_precision``,
set to ``"ieee"`` inside the scope). The legacy switches ``allow_tf32`` and
``set_float32_matmul_precision`` write those same values, so they are covered too; on a torch
without the per-backend API the legacy ones are saved and set instead. Source of the semantics:
the PyTorch notes "TensorFloat-32 (TF32) on Ampere (and later) devices" and
``torch.set_float32_matmul_precision``'s documentation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["fp32_settings", "ieee_fp32"]

#: The per-backend float32 precision settings ssgr pins to ``"ieee"`` in its ops:
#: (module path under ``torch.backends``, attribute).
_SETTINGS: tuple[tuple[str, str], ...] = (("cuda.matmul", "fp32_precision"),
                                          ("mkldnn.matmul", "fp32_precision"))


class _Scope:
    """Nesting depth and the caller's saved settings, shared by all threads of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: dict[str, object] = {}


_SCOPE = _Scope()


def _backend(path: str) -> object:
    obj: object = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _new_api() -> bool:
    return all(hasattr(_backend(path), attr) for path, attr in _SETTINGS)


def fp32_settings() -> dict[str, object]:
    """The current global float32 GEMM settings, by name (for tests and logs): the per-backend
    ``fp32_precision`` strings where torch has them, else ``allow_tf32`` and the legacy
    ``float32_matmul_precision``."""
    if _new_api():
        return {f"{path}.{attr}": getattr(_backend(path), attr) for path, attr in _SETTINGS}
    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def _set(values: dict[str, object]) -> None:
    if _new_api():
        for path, attr in _SETTINGS:
            setattr(_backend(path), attr, values[f"{path}.{attr}"])
        return
    torch.backends.cuda.matmul.allow_tf32 = bool(values["cuda.matmul.allow_tf32"])
    torch.set_float32_matmul_precision(str(values["float32_matmul_precision"]))


def _ieee_values() -> dict[str, object]:
    if _new_api():
        return {f"{path}.{attr}": "ieee" for path, attr in _SETTINGS}
    return {"cuda.matmul.allow_tf32": False, "float32_matmul_precision": "highest"}


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Run the body with IEEE float32 GEMMs (no TF32, no bf16 splitting) on CPU and CUDA.

    Saves the global settings on the outermost entry, sets them to IEEE, and restores exactly the
    saved values when the outermost scope exits (also on an exception). Nested and concurrent
    scopes (several threads running ssgr ops) share one saved state under a lock, so the caller's
    setting comes back once the last scope has left. torch's settings are process-global: while
    any scope is open, float32 GEMMs of other threads run in IEEE precision too. Raises nothing of
    its own.
    """
    with _SCOPE.lock:
        if _SCOPE.depth == 0:
            _SCOPE.saved = fp32_settings()
            _set(_ieee_values())
        _SCOPE.depth += 1
    try:
        yield
    finally:
        with _SCOPE.lock:
            _SCOPE.depth -= 1
            if _SCOPE.depth == 0:
                _set(_SCOPE.saved)
                _SCOPE.saved = {}
