"""``ssgr info``: versions, devices and the op x backend support matrix."""

from __future__ import annotations

import importlib.metadata
import platform


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``), else what
    ``platform.processor()`` / ``platform.machine()`` say. Used by ``ssgr info`` users such as the
    benchmarks (machine description and result file names)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info_text() -> str:
    """The report printed by ``ssgr info``."""
    import torch

    from ssgr.ops import support_matrix
    from ssgr.ops._registry import BACKENDS, NOT_IMPLEMENTED

    lines = [
        f"ssgr {_version('ssgr')}  python {platform.python_version()}  torch {torch.__version__}  "
        f"triton {_version('triton')}  transformers {_version('transformers')}",
        f"cpu: {platform.machine()}, {torch.get_num_threads()} torch threads",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"
            )
    else:
        lines.append("cuda: none (torch.cuda.is_available() is False)")
    lines.append("")
    matrix = support_matrix()
    width = max(len(op) for op in matrix) + 2
    lines.append(f"{'op':<{width}}" + "".join(f"{b:<11}" for b in BACKENDS))
    notes = []
    for op, row in matrix.items():
        cells = []
        for b in BACKENDS:
            reason = row[b]
            if reason is None:
                cells.append(f"{'yes':<11}")
            elif reason == NOT_IMPLEMENTED:
                cells.append(f"{'-':<11}")
            else:
                notes.append(f"  {op}/{b}: {reason}")
                cells.append(f"{'no [' + str(len(notes)) + ']':<11}")
        lines.append(f"{op:<{width}}" + "".join(cells))
    lines.append("(yes: runs here; -: no kernel of that backend for the op; no [k]: see below)")
    lines += [f"  [{i}]{n[1:]}" for i, n in enumerate(notes, 1)]
    lines.append("")
    lines += dispatch_text()
    return "\n".join(lines)


def dispatch_text() -> list[str]:
    """Per op: the dispatch order on each device type (and the call shapes with another order,
    with why), then each registered implementation's limits; the environment switches last."""
    from ssgr.ops._registry import (
        BACKENDS,
        DISPATCH_ORDER,
        OPS,
        ORDER_RULES,
        SELFCHECK_ENV,
        implementation,
        selfcheck_enabled,
    )

    lines = ["dispatch (automatic: the first backend in the order that is available, takes the "
             "call and passed its first-use self-check; the reference takes every call):"]
    for op in OPS:
        impls = {b: implementation(op, b) for b in BACKENDS}
        orders = []
        for dev, order in DISPATCH_ORDER.items():
            names = [b for b in order if impls[b] is not None]
            orders.append(f"{dev}: {' > '.join(names)}")
        lines.append(f"  {op}: " + "; ".join(orders))
        for rule in ORDER_RULES:
            if rule.op == op:
                cond = ", ".join(f"{k}={v!r}" for k, v in rule.when)
                names = [b for b in rule.order if impls[b] is not None]
                lines.append(f"    {rule.device}, {cond}: {' > '.join(names)} ({rule.why})")
        for b, impl in impls.items():
            if impl is not None:
                lines.append(f"    {b:<9} takes: {impl.limits or 'every call'}")
    lines.append(
        f"SSGR_BACKEND=<name> forces a backend; {SELFCHECK_ENV}=0 turns the first-use self-check "
        f"off (now {'on' if selfcheck_enabled() else 'off'}); `ssgr selftest` checks every "
        "backend here")
    return lines
