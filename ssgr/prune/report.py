"""The pruning report: one record per module, and the printed table."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from .store import fmt_bytes, proc_kib_field


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes: ``VmHWM`` (per address space; unlike
    ``getrusage``'s ``ru_maxrss`` it does not inherit the parent's peak through fork + exec)."""
    hwm = proc_kib_field("/proc/self/status", "VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if hwm is None else hwm


@dataclass
class ModuleRecord:
    """What happened to one pruned module.

    sparsity: achieved fraction of zero weights (from the keep mask); loss: SparseGPT's
    reconstruction loss ``sum (w - q)^2 / U_ii^2 / 2`` (None for Wanda / magnitude); damping: the
    damping fraction used (larger than ``--percdamp`` after a Cholesky retry); tokens: calibration
    tokens in the Hessian; group: the modules sharing that Hessian.
    """

    name: str
    layer: int
    group: str
    shape: list[int]
    sparsity: float
    loss: float | None
    damping: float | None
    tokens: int
    seconds: float
    backend: str


def format_modules(recs: list[dict]) -> list[str]:
    """Header, rule and one line per module record (``asdict`` of :class:`ModuleRecord`)."""
    width = max([len(r["name"]) for r in recs] + [6])
    head = (f"{'module':<{width}} {'shape':>11} {'sparsity':>8} {'loss':>11} {'damp':>7} "
            f"{'tokens':>8} {'sec':>7} backend")
    lines = [head, "-" * len(head)]
    for r in recs:
        loss = f"{r['loss']:11.4g}" if r["loss"] is not None else f"{'-':>11}"
        damp = f"{r['damping']:7.3g}" if r["damping"] is not None else f"{'-':>7}"
        shape = f"{r['shape'][0]}x{r['shape'][1]}"
        lines.append(f"{r['name']:<{width}} {shape:>11} {r['sparsity']:8.4f} {loss} {damp} "
                     f"{r['tokens']:8d} {r['seconds']:7.3f} {r['backend']}")
    return lines


def format_table(report: dict) -> str:
    """A readable per-module table with the run's totals."""
    recs = report["modules"]
    lines = format_modules(recs)
    head = lines[0]
    t = report["totals"]
    st = t["activation_store"]
    br = ", ".join(f"{k} {v:.1f}s" for k, v in t["breakdown_s"].items())
    lines += [
        "-" * len(head),
        f"{report['method']} {report['pattern']} on {report['device']} ({report['dtype']}): "
        f"{len(recs)} modules, {report['layers']} layers, {report['sequences']} sequences / "
        f"{report['tokens']} tokens, overall sparsity {t['sparsity']:.4f}",
        f"wall {t['wall_s']:.1f}s ({br})",
        f"peak memory: CPU RSS {fmt_bytes(t['peak_cpu_rss_bytes'])}, GPU "
        f"{fmt_bytes(t['peak_gpu_bytes'])}; activation store {st['kind']} "
        f"(peak {fmt_bytes(st['peak_bytes'])}, estimate {fmt_bytes(st['estimate_bytes'])}: "
        f"{st['reason']})",
    ]
    return "\n".join(lines)
