"""Backend registry and dispatch for the ssgr ops.

Each op has up to four implementations of one contract: ``reference`` (pure torch, any device,
the oracle), ``cpu`` (C++/OpenMP, ``ssgr._C``), ``triton`` (``ssgr.kernels``) and ``cuda``
(``ssgr._cuda``), in the op's package ``ssgr/ops/<op>/`` (``reference.py``, ``cpu.py``,
``gpu.py``). An implementation is *registered* when its code exists for the op, and
*available* when it can run here (its probe returns no reason). It can *take a call* when its
``supports(**call)`` returns no reason for the call's properties (dtypes, blocksize, n/m,
``per``, shapes: each op's package builds them, e.g. :func:`ssgr.ops.sparsegpt.sparsegpt_call`).

Automatic dispatch walks the op's order for the tensors' device type (:func:`dispatch_order`:
:data:`DISPATCH_ORDER`, or an :data:`ORDER_RULES` entry where one op or call shape is better
served by another order) and takes the first implementation that is available, takes the call
and has passed its first-use self-check. It never raises for a call the reference can run.

First-use self-check: the first time an implementation other than ``reference`` is picked for
an op on a (device type, dtype) in this process, it is run once on a small fixed case against the
reference (:func:`ssgr.ops.selftest.check_implementation`: its error against a float64 oracle is
at most twice the reference's, its masks equal the reference's except at near-ties). A mismatch,
a crash or a launch failure logs one ERROR line (op, backend, device, dtype, measured error) and
takes the implementation out of dispatch for the rest of the process. ``SSGR_SELFCHECK=0`` turns
the check off.

Forcing: ``backend=`` on an op, or ``SSGR_BACKEND`` in the environment. A forced backend that is
not registered for the op, not available, not able to run on the tensor's device, not able to
take the call, or failed its self-check raises :class:`BackendError` with the reason; there is
never a silent fallback. ``SSGR_BACKEND`` applies to the ops that implement that backend; ops
without an implementation of that name (see ``ssgr info``) keep their normal dispatch. An
explicit ``backend=`` argument is always strict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ssgr.errors import SSGRError

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("reference", "cpu", "triton", "cuda")
#: Default order per device type (an op or a call shape can override it: :data:`ORDER_RULES`).
DISPATCH_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
OPS: tuple[str, ...] = ("hessian", "sparsegpt", "nm_mask", "topk_mask", "wanda_scores")
#: The op packages under ssgr/ops/ whose implementation modules register the ops above.
OPS_PACKAGES: tuple[str, ...] = ("hessian", "sparsegpt", "masks")
#: Environment variable: ``0`` turns the first-use self-check off.
SELFCHECK_ENV = "SSGR_SELFCHECK"


NOT_IMPLEMENTED = "not implemented for this op"


class BackendError(SSGRError, RuntimeError):
    """A backend was forced that cannot run this op on this device or call."""


Probe = Callable[[], "str | None"]
#: ``supports(**call) -> None`` when the implementation can take a call with these properties,
#: else the reason it cannot. Properties it does not know (or that a caller omits) are accepted.
Supports = Callable[..., "str | None"]


@dataclass(frozen=True)
class OrderRule:
    """Dispatch order of ``op`` on ``device`` tensors for calls whose properties match ``when``
    (all ``(name, value)`` pairs equal), and why."""

    op: str
    device: str
    when: tuple[tuple[str, Any], ...]
    order: tuple[str, ...]
    why: str

    def matches(self, op: str, device: str, call: dict[str, Any]) -> bool:
        return (op == self.op and device == self.device
                and all(call.get(k) == v for k, v in self.when))


#: Per-op (and per-call-shape) orders that differ from :data:`DISPATCH_ORDER`.
ORDER_RULES: tuple[OrderRule, ...] = (
    OrderRule(
        "topk_mask", "cuda", (("per", "layer"),), ("reference", "triton", "cuda"),
        "a layer-wide mask is one row of r*c scores: the cuda kernel gives a row to one thread "
        "block (one SM for the whole matrix); torch's device-wide sort (the reference) comes "
        "first, then triton's multi-program radix select",
    ),
)


def _accept(**call: Any) -> str | None:
    return None


def _always() -> str | None:
    return None


@dataclass
class Impl:
    """One registered implementation of an op.

    fn: the implementation (the op's internal signature, see its module).
    devices: device types it accepts (a callable: Triton's depend on the environment).
    probe: None when it can run here, else why not.
    supports: ``supports(**call)``: None when it can take the call, else why not.
    limits: one line for ``ssgr info`` naming what it cannot take.
    """

    op: str
    backend: str
    fn: Callable
    devices: Callable[[], tuple[str, ...]]
    probe: Probe = _always
    supports: Supports = _accept
    limits: str = ""


@dataclass
class _Registry:
    impls: dict[str, dict[str, Impl]] = field(default_factory=dict)
    loaded: bool = False
    #: first-use self-check results: (op, backend, device type, dtype) -> None (passed) or the
    #: reason the implementation is out of dispatch
    checked: dict[tuple[str, str, str, str], str | None] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_REG = _Registry()


def register(
    op: str,
    backend: str,
    *,
    devices: tuple[str, ...] | Callable[[], tuple[str, ...]],
    probe: Probe = _always,
    supports: Supports | None = None,
    limits: str = "",
) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``.

    Args:
        devices: the torch device types it accepts (or a callable returning them, for backends
            such as Triton whose devices depend on the environment).
        probe: returns None when the backend can run here, else the reason it cannot.
        supports: ``supports(**call)`` returns None when it can take a call with these
            properties (see :func:`resolve`), else the reason; default: every call.
        limits: what it cannot take, in one line, for ``ssgr info``.
    Raises:
        ValueError: an unknown op or backend name.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    dev = devices if callable(devices) else (lambda d=tuple(devices): d)

    def deco(fn: Callable) -> Callable:
        _REG.impls.setdefault(op, {})[backend] = Impl(
            op=op, backend=backend, fn=fn, devices=dev, probe=probe,
            supports=supports or _accept, limits=limits,
        )
        return fn

    return deco


def _load_backends() -> None:
    """Import the backend modules once (their import registers them; nothing heavy runs)."""
    if _REG.loaded:
        return
    _REG.loaded = True
    from . import _backends

    _backends.load()


def implementation(op: str, backend: str) -> Impl | None:
    """The registered :class:`Impl` of ``op`` by ``backend``, or None."""
    _load_backends()
    return _REG.impls.get(op, {}).get(backend)


@contextlib.contextmanager
def substituted(op: str, backend: str, **changes: Any) -> Iterator[Impl]:
    """Context manager: ``backend``'s implementation of ``op`` with some fields replaced (``fn``,
    ``devices`` (a tuple or a callable), ``probe``, ``supports``; a backend not registered for
    ``op`` is added, then needs ``fn`` and ``devices``), restored on exit together with the
    self-check results. For tests and ``ssgr selftest``: e.g. a fake ``cuda`` probe to see what
    dispatch would pick for a call on a GPU machine, or a broken implementation to see the
    self-check catch it."""
    _load_backends()
    if "devices" in changes and not callable(changes["devices"]):
        changes["devices"] = (lambda d=tuple(changes["devices"]): d)
    with _REG.lock:
        old = _REG.impls.get(op, {}).get(backend)
        new = (dataclasses.replace(old, **changes) if old is not None
               else Impl(op=op, backend=backend, **changes))
        saved = dict(_REG.checked)
        _REG.impls.setdefault(op, {})[backend] = new
        _forget_checks(op, backend)
    try:
        yield new
    finally:
        with _REG.lock:
            if old is None:
                _REG.impls[op].pop(backend, None)
            else:
                _REG.impls[op][backend] = old
            _REG.checked.clear()
            _REG.checked.update(saved)


def _forget_checks(op: str, backend: str) -> None:
    for key in [k for k in _REG.checked if k[0] == op and k[1] == backend]:
        del _REG.checked[key]


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


def selfcheck_enabled() -> bool:
    """False when ``SSGR_SELFCHECK=0`` (or ``false``/``no``/``off``) turns the first-use check
    off."""
    return os.environ.get(SELFCHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def dispatch_order(op: str, device_type: str, **call: Any) -> tuple[str, ...]:
    """The backends automatic dispatch tries, in order, for ``op`` on ``device_type`` tensors
    and a call with these properties (the first matching :data:`ORDER_RULES` entry, else
    :data:`DISPATCH_ORDER`; reference only on other device types)."""
    for rule in ORDER_RULES:
        if rule.matches(op, device_type, call):
            return rule.order
    return DISPATCH_ORDER.get(device_type, ("reference",))


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def _self_check(impl: Impl, device: torch.device, call: dict[str, Any]) -> str | None:
    """None when ``impl`` passed (now or earlier in this process) its first-use check on
    ``device``'s type and the call's dtype, else the reason it is out of dispatch."""
    if impl.backend == "reference" or not selfcheck_enabled():
        return None
    dtype = call.get("dtype") or torch.float32
    key = (impl.op, impl.backend, device.type, _dtype_name(dtype))
    with _REG.lock:
        if key in _REG.checked:
            return _REG.checked[key]
        _REG.checked[key] = None  # a nested dispatch of the same key does not check again
        ref = _REG.impls[impl.op]["reference"]
        from .selftest import check_implementation

        try:
            res = check_implementation(impl.op, impl.fn, ref.fn, device, dtype)
            reason = None if res.ok else (
                f"self-check failed: {res.detail} (error {res.error:.3g}, bound {res.bound:.3g})"
            )
            err = f"{res.error:.3g} (bound {res.bound:.3g})"
        except Exception as exc:  # a crash or launch failure takes the backend out, not the run
            reason = f"self-check crashed: {type(exc).__name__}: {exc}"
            err = "n/a (crashed)"
        _REG.checked[key] = reason
    if reason is not None:
        log.error(
            "ssgr self-check FAILED: op=%s backend=%s device=%s dtype=%s error=%s: %s; %s is out "
            "of dispatch for this process (%s=0 turns the check off)",
            impl.op, impl.backend, device.type, key[3], err, reason, impl.backend, SELFCHECK_ENV,
        )
    return reason


def _why_not(impl: Impl, device: torch.device, call: dict[str, Any]) -> str | None:
    if impl.probe() is not None:
        return impl.probe()
    if device.type not in impl.devices():
        return f"runs on {', '.join(impl.devices())} tensors, not {device.type}"
    return impl.supports(**call)


def resolve(
    op: str, device: torch.device | str, backend: str | None = None, **call: Any
) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for tensors on ``device`` and a call with properties
    ``call`` (as built by the op package's ``*_call`` function, e.g.
    :func:`ssgr.ops.sparsegpt.sparsegpt_call`; omitted properties are not checked).

    Returns ``(backend_name, fn)``. Raises :class:`BackendError` for a forced backend that
    cannot run (unknown, not implemented for ``op``, unavailable, wrong device, cannot take the
    call, or failed its first-use self-check).
    """
    _load_backends()
    device = torch.device(device)
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
        reason = impl.supports(**call)
        if reason is not None:
            raise BackendError(
                f"{source}{forced!r} cannot take this {op!r} call: {reason}. Change the call or "
                "do not force a backend (automatic dispatch picks one that can)."
            )
        reason = _self_check(impl, device, call)
        if reason is not None:
            raise BackendError(
                f"{source}{forced!r} is out of dispatch for op {op!r} on {device.type}: {reason}. "
                "Do not force this backend, or run `ssgr selftest` for details."
            )
        return forced, impl.fn
    for name in dispatch_order(op, device.type, **call):
        impl = impls.get(name)
        if impl is None or _why_not(impl, device, call) is not None:
            continue
        if _self_check(impl, device, call) is None:
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


def self_check_results() -> dict[tuple[str, str, str, str], str | None]:
    """The first-use self-checks run so far in this process: ``{(op, backend, device type,
    dtype): None if passed, else the reason the implementation is out of dispatch}``."""
    with _REG.lock:
        return dict(_REG.checked)
