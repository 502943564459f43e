"""A scaling model of ``torchrun ... -m ssgr prune`` (issue #17) for R1-Distill-Qwen-14B and a
70B Llama-architecture model on 1, 2, 4 and 8 GPUs.

Usage::

    python benchmarks/dist_model.py [--busbw 400] [--report prune_report.json]

What scales and what does not, per decoder layer (``--sequential module``):

* forward passes and Hessian accumulation run on each rank's share of the tokens: time / N
  (balanced by token count; the longest sequence bounds the split).
* the statistics all-reduce: ``4 * sum(d_g^2)`` bytes per layer (one fp32 ``d x d`` Hessian per
  input group g: q/k/v, o, gate/up, down), ring all-reduce ``2 (N - 1) / N * bytes / busbw``.
* OBS (SparseGPT): the matrices of one group are spread over the ranks by the estimated cost
  ``cols^3 + rows * cols^2`` (what ``ssgr.prune.orders.assign_work`` balances); a stage can go no
  faster than its most expensive matrix. The groups run in order, so the OBS time per layer is
  ``sum over groups of max(largest matrix, group cost / N)`` in cost units (a lower bound: greedy
  bins can be worse).
* the pruned weights are broadcast from their owners: ``2 * rows * cols`` bytes (bf16) per
  matrix, ``bytes / busbw``.

The compute times themselves (forward, Hessian, OBS seconds on one GPU) are not measured here:
no GPU was lent to this project yet. The model therefore gives (1) the bytes and communication
seconds, which follow from the shapes and the link bandwidth, (2) the OBS speed-up bound from the
cost model, and (3) the whole run's speed-up as a function of OBS's share f of one GPU's time,
``1 / ((1 - f) / N + f / S_obs(N))``, without the communication (its seconds are listed
beside: next to hours of compute they do not move the ratio). ``--report`` takes f from a real
single-process prune report (``totals.breakdown_s``: ``obs`` against the sum) instead of listing
several values.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dist_model")


@dataclass(frozen=True)
class Arch:
    """Decoder-layer shapes: hidden size h, MLP width i, query heads x head dim, KV heads."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    def groups(self) -> list[list[tuple[int, int]]]:
        """Per Hessian group (module order), its matrices as ``(rows, cols)``."""
        h, i, q = self.hidden, self.intermediate, self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return [[(q, h), (kv, h), (kv, h)], [(h, q)], [(i, h), (i, h)], [(h, i)]]


#: R1-Distill-Qwen-14B (Qwen2.5-14B shapes) and R1-Distill-Llama-70B (Llama-3-70B shapes), from
#: their config.json files.
ARCHS = (
    Arch("R1-Distill-Qwen-14B", 48, 5120, 13824, 40, 8, 128),
    Arch("R1-Distill-Llama-70B", 80, 8192, 28672, 64, 8, 128),
)


def cost(rows: int, cols: int) -> float:
    """SparseGPT cost units of one matrix: Cholesky-inverse ``cols^3`` + OBS ``rows * cols^2``."""
    return float(cols) ** 3 + float(rows) * float(cols) ** 2


def obs_speedup(arch: Arch, n: int) -> float:
    """Lower-bound OBS time with ``n`` ranks against one rank (module-parallel, groups in order)."""
    one = sum(cost(r, c) for g in arch.groups() for r, c in g)
    par = sum(max(max(cost(r, c) for r, c in g), sum(cost(r, c) for r, c in g) / n)
              for g in arch.groups())
    return one / par


def comm_seconds(arch: Arch, n: int, busbw: float) -> tuple[float, float, float]:
    """``(all-reduce bytes per layer, all-reduce s, broadcast s)`` for the whole model."""
    if n == 1:
        return 0.0, 0.0, 0.0
    hess = 4.0 * sum(g[0][1] ** 2 for g in arch.groups())
    weights = 2.0 * sum(r * c for g in arch.groups() for r, c in g)
    ar = 2 * (n - 1) / n * hess / (busbw * 1e9) * arch.layers
    bc = weights / (busbw * 1e9) * arch.layers
    return hess, ar, bc


def table(busbw: float, shares: list[float]) -> str:
    """The markdown table of the model for every architecture and rank count."""
    head = ("| model | GPUs | all-reduce / layer | all-reduce, whole run | broadcast, whole run "
            "| OBS speed-up bound | " + " | ".join(f"speed-up if OBS is {f:.0%}" for f in shares)
            + " |")
    lines = [head, "|" + "---|" * (6 + len(shares))]
    for arch in ARCHS:
        for n in (1, 2, 4, 8):
            hess, ar, bc = comm_seconds(arch, n, busbw)
            s_obs = obs_speedup(arch, n)
            ups = [1.0 / ((1 - f) / n + f / s_obs) for f in shares]
            gb = f"{hess / 1e9:.2f} GB" if n > 1 else "-"
            lines.append(
                f"| {arch.name} | {n} | {gb} | {ar:.2f} s | {bc:.2f} s | "
                f"{s_obs:.2f}x | " + " | ".join(f"{u:.2f}x" for u in ups) + " |")
    return "\n".join(lines)


def obs_share(report: Path) -> float:
    """OBS's share of a single-process prune report's timed stages."""
    b = json.loads(report.read_text())["totals"]["breakdown_s"]
    return b.get("obs", 0.0) / sum(v for v in b.values() if isinstance(v, (int, float)))


def main() -> None:
    """Print the model's table (markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busbw", type=float, default=400.0,
                    help="all-reduce bus bandwidth in GB/s (NVLink 4, 8x H100/H200 SXM: NCCL "
                         "reaches about 350-450)")
    ap.add_argument("--report", type=Path, default=None,
                    help="a single-process prune_report.json to take OBS's share from")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shares = [obs_share(args.report)] if args.report else [0.1, 0.3, 0.5]
    log.info("%s", table(args.busbw, shares))


if __name__ == "__main__":
    main()
