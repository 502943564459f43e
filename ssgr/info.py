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
    from ssgr.ops._registry import BACKENDS, DISPATCH_ORDER, NOT_IMPLEMENTED

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
    lines.append(
        "dispatch order: "
        + "; ".join(f"{dev} tensors: {' > '.join(order)}" for dev, order in DISPATCH_ORDER.items())
    )
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
    return "\n".join(lines)
