"""Turn a pytest-benchmark JSON into a markdown table with "x vs peer" ratios.

Usage: ``python benchmarks/report.py benchmarks/results/<machine>.json``
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


if __name__ == "__main__":
    sys.stdout.write(table(sys.argv[1]) + "\n")
