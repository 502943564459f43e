"""The pruning report: the stage timer, one record per module, the report and its table.

Timing (``totals.breakdown_s`` of ``prune_report.json``): the engine's work is a sequence of
stages, each timed once by :meth:`Timer.stage` (wall-clock ``time.perf_counter``; on CUDA the
device is synchronised once at the end of each outermost stage, never per hooked call):

* ``capture``: running the calibration sequences up to the first decoder layer;
* ``forward``: every pass of the sequences through a layer or a sub-module, *minus* the time of
  the Hessian hooks inside it;
* ``hessian``: the hooks that feed module inputs to the accumulators (their host time: on CUDA the
  kernels they enqueue may finish inside the enclosing ``forward``), and reading each group's
  statistics before it is pruned (synchronised);
* ``obs``: pruning the modules (SparseGPT / Wanda / magnitude), module records included;
* ``io``: reading weights and writing shards, the index and ``config.json``;
* ``checkpoint``: saving activations for ``--resume``;
* under torchrun only (:mod:`ssgr.prune.dist`): ``allreduce`` (summing the statistics over ranks,
  error checks included) and ``broadcast`` (objects sent from rank 0 to every rank).

A nested stage's time is taken out of the stage around it, so the stages never overlap and the
breakdown sums to at most ``totals.wall_s``; the rest of the wall time is setup (reading the
config and calibration file, building the skeleton, probing each layer's structure) and
bookkeeping between stages.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from .store import fmt_bytes, proc_kib_field

#: The keys of ``totals.breakdown_s``, in report order.
BREAKDOWN = ("capture", "forward", "hessian", "obs", "io", "checkpoint")


class Timer:
    """Seconds per :data:`BREAKDOWN` key, from non-overlapping stages (see the module docstring).

    Args:
        device: the compute device; a CUDA device is synchronised at the end of each outermost
            stage so its queued work is counted in that stage.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = dict.fromkeys(BREAKDOWN, 0.0)
        self._nested: list[float] = []  # per open stage: seconds of the stages inside it

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA only)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, key: str) -> Iterator[None]:
        """Time the block as ``key``; time spent in stages opened inside it counts only there."""
        outermost = not self._nested
        self._nested.append(0.0)
        t0 = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            if ok and outermost:
                self.sync()
            elapsed = time.perf_counter() - t0
            inner = self._nested.pop()
            self.seconds[key] = self.seconds.get(key, 0.0) + elapsed - inner
            if self._nested:
                self._nested[-1] += elapsed


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
    tokens in the Hessian (for an MoE expert: the tokens routed to it); group: the modules
    sharing that Hessian; method: the method that pruned it (``magnitude`` under the
    ``--min-tokens`` policy; None in records written before the policy existed); fallback: why
    the policy applied (too few tokens, or every input zero), None when it did not.
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
    flag: str | None = None
    dead_inputs: int | None = None
    method: str | None = None
    fallback: str | None = None


#: Allowed distance of a module's zero fraction from the target (plus one weight per row).
DEVIATION_TOLERANCE = 0.01


def deviation(measured: float, target: float, cols: int, dead: int | None) -> str | None:
    """Why a module's written zero fraction ``measured`` deviates from the ``target`` fraction,
    or None when it is within :data:`DEVIATION_TOLERANCE` + ``1 / cols`` (per-row rounding).
    E.g. SparseGPT zeroes the input columns no calibration token reached (``dead``), all of
    them for an all-zero Hessian."""
    if abs(measured - target) <= DEVIATION_TOLERANCE + 1.0 / max(cols, 1):
        return None
    why = f"{measured:.1%} of its weights are zero, the target is {target:.1%}"
    if dead:
        why += (f"; {dead} of its {cols} inputs were exactly zero on every calibration token "
                "(dead inputs: zeroed norm weights, or an expert no token reached)")
    return why


def overall_sparsity(records: list[ModuleRecord]) -> float:
    """Zero fraction over all pruned modules, weighted by their sizes (0.0 for none)."""
    tot = sum(r.shape[0] * r.shape[1] for r in records)
    return sum(r.sparsity * r.shape[0] * r.shape[1] for r in records) / tot if tot else 0.0


def build_report(
    *, cfg, src, out, pattern, device: torch.device, dtype: torch.dtype, seqs: list,
    layers: int, start: int, records: list[ModuleRecord], wall_s: float, timer: Timer,
    store_info: dict, store_peak_bytes: int,
) -> dict:
    """The ``prune_report.json`` document of a finished run.

    Args:
        cfg: the run's :class:`~ssgr.prune.config.PruneConfig`; src / out: model and output
            directories; pattern: the sparsity pattern; seqs: the calibration sequences;
            layers: decoder layer count; start: the layer the run resumed from (0: none);
            wall_s: seconds since the run started; store_info: the activation store's kind,
            reason and size estimate; store_peak_bytes: its peak.
    """
    peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {
        "status": "complete",
        "model": str(src),
        "calib": str(cfg.calib),
        "out": str(out),
        "config": dict(asdict(cfg).items()),
        "method": cfg.method,
        "pattern": str(pattern),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "sequences": len(seqs),
        "tokens": sum(s.tokens for s in seqs),
        "statistics_tokens": sum(s.stat_tokens for s in seqs),
        "tokens_note": "Hessians are averaged over tokens, not sequences",
        "layers": layers,
        "resumed_from_layer": start,
        "modules": [asdict(r) for r in records],
        "totals": {
            "wall_s": wall_s,
            "breakdown_s": dict(timer.seconds),
            "peak_cpu_rss_bytes": peak_rss_bytes(),
            "peak_gpu_bytes": int(peak_gpu),
            "activation_store": {**store_info, "peak_bytes": store_peak_bytes},
            "sparsity": overall_sparsity(records),
            "flagged": [r.name for r in records if r.flag],
            "fallbacks": [r.name for r in records if r.fallback],
        },
    }


def format_modules(recs: list[dict]) -> list[str]:
    """Header, rule and one line per module record (``asdict`` of :class:`ModuleRecord`)."""
    width = max([len(r["name"]) for r in recs] + [6])
    head = (f"{'module':<{width}} {'shape':>11} {'sparsity':>8} {'loss':>11} {'damp':>7} "
            f"{'tokens':>8} {'sec':>7} {'method':<9} backend  flag")
    lines = [head, "-" * len(head)]
    for r in recs:
        loss = f"{r['loss']:11.4g}" if r["loss"] is not None else f"{'-':>11}"
        damp = f"{r['damping']:7.3g}" if r["damping"] is not None else f"{'-':>7}"
        shape = f"{r['shape'][0]}x{r['shape'][1]}"
        method = (r.get("method") or "-") + ("*" if r.get("fallback") else "")
        notes = [n for n in (r.get("flag"), r.get("fallback") and
                             f"magnitude fallback: {r['fallback']}") if n]
        lines.append(f"{r['name']:<{width}} {shape:>11} {r['sparsity']:8.4f} {loss} {damp} "
                     f"{r['tokens']:8d} {r['seconds']:7.3f} {method:<9} {r['backend']}"
                     + (f"  ! {'; '.join(notes)}" if notes else ""))
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
        f"{report['tokens']} tokens, overall sparsity {t['sparsity']:.4f} (measured on the "
        f"written weights)",
        f"wall {t['wall_s']:.1f}s ({br})",
        f"peak memory: CPU RSS {fmt_bytes(t['peak_cpu_rss_bytes'])}, GPU "
        f"{fmt_bytes(t['peak_gpu_bytes'])}; activation store {st['kind']} "
        f"(peak {fmt_bytes(st['peak_bytes'])}, estimate {fmt_bytes(st['estimate_bytes'])}: "
        f"{st['reason']})",
    ]
    if t.get("fallbacks"):
        lines.append(f"WARNING: {len(t['fallbacks'])} module(s) pruned by magnitude under the "
                     "--min-tokens policy (method *): " + ", ".join(t["fallbacks"]))
    if t.get("flagged"):
        lines.append(f"WARNING: {len(t['flagged'])} module(s) deviate from the pattern (flag "
                     "column): " + ", ".join(t["flagged"]))
    return "\n".join(lines)
