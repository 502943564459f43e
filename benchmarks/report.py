"""Turn a pytest-benchmark JSON into a markdown table with "x vs peer" ratios and a PNG plot.

Usage: ``python benchmarks/report.py benchmarks/results/<machine>.json [--png OUT.png]``
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def table(path: str) -> str:
    """Markdown table of one results file: per group, each implementation's median and its
    speed-up over the group's peer (llm-compressor) and reference where present."""
    data = json.load(open(path))
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    m = data.get("machine_info", {}).get("ssgr", {})
    lines = [
        f"Machine: {m.get('cpu')} ({m.get('threads')} threads), GPU: {m.get('gpu') or 'none'}, "
        f"torch {m.get('torch')}, triton {m.get('triton')}; {data.get('datetime', '')[:10]}",
        "",
        "| group | impl | median s | x vs llm-compressor | x vs reference | mask mismatches |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for g, rows in sorted(groups.items()):
        med = {r["extra_info"].get("impl", r["name"]): r["stats"]["median"] for r in rows}
        peer, refm = med.get("llm-compressor"), med.get("reference")
        for r in sorted(rows, key=lambda r: -r["stats"]["median"]):
            impl = r["extra_info"].get("impl", r["name"])
            t = r["stats"]["median"]
            vs_peer = f"{peer / t:.2f}" if peer else "-"
            vs_ref = f"{refm / t:.2f}" if refm else "-"
            mism = r["extra_info"].get("mask_mismatch")
            mism_s = f"{mism} / {r['extra_info'].get('numel')}" if mism is not None else "-"
            lines.append(f"| {g} | {impl} | {t:.3f} | {vs_peer} | {vs_ref} | {mism_s} |")
    return "\n".join(lines)


def plot(path: str, png: str) -> None:
    """Bar chart of each group's medians (log scale), one bar per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.load(open(path))
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"].get("impl", b["name"])] = b["stats"]["median"]
    names = sorted(groups)
    impls = sorted({i for g in groups.values() for i in g})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        xs = [i + k * width for i, g in enumerate(names) if impl in groups[g]]
        ys = [groups[g][impl] for g in names if impl in groups[g]]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median seconds (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results")
    ap.add_argument("--png", help="also write a bar chart here")
    a = ap.parse_args()
    sys.stdout.write(table(a.results) + "\n")
    if a.png:
        plot(a.results, a.png)
