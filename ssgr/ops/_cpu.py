"""Loader of the native CPU extension ``ssgr._C`` (C++/OpenMP, built from csrc/ by setup.py)."""

from __future__ import annotations

import functools
from types import ModuleType

import torch

# buffers this large get the huge-page hint: their first touch is then about 4x cheaper here
# (a fresh 64 MiB fp32 buffer: 26 ms of 4 KiB page faults vs 7 ms on 2 MiB pages)
HUGEPAGE_MIN_BYTES = 8 << 20


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from ssgr import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, (
            f"the native extension ssgr._C is not built ({exc}); run "
            "`pip install --no-build-isolation --no-deps -e .` (or `make setup`)"
        )
    return _C, None


def probe() -> str | None:
    """None when ``ssgr._C`` imports, else why not."""
    return _load()[1]


def lib() -> ModuleType:
    """The loaded ``ssgr._C`` module (call only after :func:`probe` returned None)."""
    mod, reason = _load()
    if mod is None:
        raise RuntimeError(reason)
    return mod


def empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.empty(shape)`` on the cpu; from :data:`HUGEPAGE_MIN_BYTES` up with a
    transparent-huge-page hint (``advise_hugepages`` in csrc/ssgr_cpu.h), for the large
    scratch and output buffers of the cpu kernels. Call only after :func:`probe` returned None."""
    t = torch.empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if nbytes >= HUGEPAGE_MIN_BYTES:
        lib().advise_hugepages(t.data_ptr(), nbytes)
    return t
