"""Backend registry and dispatch for the ssgr ops.

Each op has up to four implementations of one contract: ``reference`` (pure torch, any device,
the oracle), ``cpu`` (C++/OpenMP, ``ssgr._C``), ``triton`` (``ssgr.kernels``) and ``cuda``
(``ssgr._cuda``), in the op's package ``ssgr/ops/<op>/`` (``reference.py``, ``cpu.py``,
``gpu.py``). An implementation is *registered* when its code exists for the op, and
*available* when it can run here (its probe returns no reason). Dispatch picks, by the tensor's
device, the first available implementation in :data:`DISPATCH_ORDER`.

Forcing: ``backend=`` on an op, or ``SSGR_BACKEND`` in the environment. A forced backend that is
not registered for the op, not available, or not able to run on the tensor's device raises
:class:`BackendError`; there is never a silent fallback. ``SSGR_BACKEND`` applies to the ops that
implement that backend; ops without an implementation of that name (see ``ssgr info``) keep their
normal dispatch. An explicit ``backend=`` argument is always strict.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ssgr.errors import SSGRError

BACKENDS: tuple[str, ...] = ("reference", "cpu", "triton", "cuda")
DISPATCH_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
OPS: tuple[str, ...] = ("hessian", "sparsegpt", "nm_mask", "topk_mask", "wanda_scores")
#: The op packages under ssgr/ops/ whose implementation modules register the ops above.
OPS_PACKAGES: tuple[str, ...] = ("hessian", "sparsegpt", "masks")


NOT_IMPLEMENTED = "not implemented for this op"


class BackendError(SSGRError, RuntimeError):
    """A backend was forced that cannot run this op on this device."""


Probe = Callable[[], "str | None"]


@dataclass
class _Impl:
    fn: Callable
    devices: Callable[[], tuple[str, ...]]
    probe: Probe


@dataclass
class _Registry:
    impls: dict[str, dict[str, _Impl]] = field(default_factory=dict)
    loaded: bool = False


_REG = _Registry()


def _always() -> str | None:
    return None


def register(
    op: str,
    backend: str,
    *,
    devices: tuple[str, ...] | Callable[[], tuple[str, ...]],
    probe: Probe = _always,
) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``.

    ``devices`` lists the torch device types it accepts (or a callable returning them, for
    backends such as Triton whose devices depend on the environment); ``probe`` returns None when
    the backend can run here, else the reason it cannot.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    dev = devices if callable(devices) else (lambda d=tuple(devices): d)

    def deco(fn: Callable) -> Callable:
        _REG.impls.setdefault(op, {})[backend] = _Impl(fn=fn, devices=dev, probe=probe)
        return fn

    return deco


def _load_backends() -> None:
    """Import the backend modules once (their import registers them; nothing heavy runs)."""
    if _REG.loaded:
        return
    _REG.loaded = True
    from . import _backends

    _backends.load()


def _env_backend() -> str | None:
    name = os.environ.get("SSGR_BACKEND", "").strip()
    if not name:
        return None
    if name not in BACKENDS:
        raise BackendError(
            f"SSGR_BACKEND={name!r} is not a backend; use one of {', '.join(BACKENDS)} "
            "or unset it"
        )
    return name


def resolve(op: str, device: torch.device, backend: str | None = None) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for tensors on ``device``.

    Returns ``(backend_name, fn)``. Raises :class:`BackendError` for a forced backend that cannot
    run (unknown, not implemented for ``op``, unavailable, or wrong device).
    """
    _load_backends()
    impls = _REG.impls.get(op, {})
    forced, source = backend, "backend="
    if forced is None:
        env = _env_backend()
        if env is not None and env in impls:
            forced, source = env, "SSGR_BACKEND="
    if forced is not None:
        if forced not in BACKENDS:
            raise BackendError(f"{source}{forced!r} is not a backend; use one of {BACKENDS}")
        impl = impls.get(forced)
        if impl is None:
            raise BackendError(
                f"{source}{forced!r}: op {op!r} has no {forced!r} implementation "
                f"(implemented: {', '.join(sorted(impls))}); pick one of those"
            )
        reason = impl.probe()
        if reason is not None:
            raise BackendError(
                f"{source}{forced!r} is unavailable for op {op!r}: {reason}. "
                "Run `ssgr info` for the support matrix, or do not force a backend."
            )
        if device.type not in impl.devices():
            raise BackendError(
                f"{source}{forced!r} cannot run op {op!r} on {device.type} tensors "
                f"(it runs on: {', '.join(impl.devices())}); move the tensors or pick another "
                "backend"
            )
        return forced, impl.fn
    for name in DISPATCH_ORDER.get(device.type, ("reference",)):
        impl = impls.get(name)
        if impl is not None and device.type in impl.devices() and impl.probe() is None:
            return name, impl.fn
    impl = impls.get("reference")
    if impl is None:  # pragma: no cover - every op registers a reference
        raise BackendError(f"op {op!r} has no reference implementation")
    return "reference", impl.fn


def support_matrix() -> dict[str, dict[str, str | None]]:
    """``{op: {backend: None if available else the reason}}`` for every op and backend."""
    _load_backends()
    out: dict[str, dict[str, str | None]] = {}
    for op in OPS:
        row: dict[str, str | None] = {}
        for name in BACKENDS:
            impl = _REG.impls.get(op, {}).get(name)
            row[name] = NOT_IMPLEMENTED if impl is None else impl.probe()
        out[op] = row
    return out
