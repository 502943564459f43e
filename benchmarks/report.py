"""Turn a pytest-benchmark JSON into a markdown table with "x vs peer" ratios and a PNG plot.

Usage: ``python benchmarks/report.py benchmarks/results/<machine>.json [--png OUT.png]``

Groups are read from the benchmarks' ``extra_info`` (``op``, ``impl``, ``model``): the table has one
section per op, groups ordered by model (in the order the benchmarks ran, smallest model first)
and, within a group, the slowest implementation first. Ratios: "x vs llm-compressor" (the peer),
"x vs reference" (ssgr's pure-torch backend) and "x vs torch" (a plain torch baseline,
``torch-*``), each only where the group has that implementation. The "sparsegpt-paired"
section gives the median of per-round ratios from alternating peer / ssgr rounds.
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from collections import defaultdict

PEER = "llm-compressor"
REFERENCE = "reference"
PAIRED = "sparsegpt-paired"  # bench_sparsegpt.py's alternating-rounds measurement of the speed goal


def _impl(b: dict) -> str:
    return b["extra_info"].get("impl", b["name"])


def _op(b: dict) -> str:
    return b["extra_info"].get("op") or b["group"].split()[0]


def _ordered_groups(data: dict) -> list[tuple[str, str, list[dict]]]:
    """``[(op, group, rows)]`` sorted by op name, then model, then group, models and groups in
    their first-run order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    first_model: dict[tuple[str, str], int] = {}
    first_group: dict[str, int] = {}
    for i, b in enumerate(data["benchmarks"]):
        g = b["group"] or b["name"]
        groups[g].append(b)
        first_model.setdefault((_op(b), b["extra_info"].get("model", "")), i)
        first_group.setdefault(g, i)

    def key(g: str) -> tuple:
        b = groups[g][0]
        op = _op(b)
        return (op, first_model[(op, b["extra_info"].get("model", ""))], first_group[g])

    return [(_op(groups[g][0]), g, groups[g]) for g in sorted(groups, key=key)]


#: The fairest plain-torch baselines, preferred where a group has them: cuBLAS bf16 -> fp32
#: output for the Hessian (GPU only) and ``torch.kthvalue`` for a layer-wide top-k.
PREFERRED_BASELINES = ("torch-mm-fp32out", "torch-kthvalue")


def _baseline(impls: list[str]) -> str | None:
    """The group's plain torch baseline (``torch-*``): a preferred one where present, else the
    first by name; None if the group has none."""
    preferred = next((b for b in PREFERRED_BASELINES if b in impls), None)
    return preferred or next((i for i in sorted(impls) if i.startswith("torch")), None)


def _seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def _rate(extra: dict, t: float) -> str:
    if extra.get("flops"):
        return f"{extra['flops'] / t / 1e9:.1f} GFLOP/s"
    if extra.get("bytes"):
        return f"{extra['bytes'] / t / 1e9:.1f} GB/s"
    return "-"


def _ratio(base: float | None, t: float) -> str:
    return f"{base / t:.2f}" if base else "-"


def table(path: str) -> str:
    """Markdown of one results file: per op a table with, per group, each implementation's median
    and its speed-up over the group's peer (llm-compressor), reference and torch baseline where
    present."""
    with open(path) as f:
        data = json.load(f)
    m = data.get("machine_info", {}).get("ssgr", {})
    lines = [
        f"Machine: {m.get('cpu')} ({m.get('threads')} threads), GPU: {m.get('gpu') or 'none'}, "
        f"torch {m.get('torch')}, triton {m.get('triton')}; {data.get('datetime', '')[:10]}",
    ]
    if m.get("smoke"):
        lines.append("")
        lines.append("**Smoke run (SSGR_BENCH_SMOKE=1): tiny shapes, one round; not a "
                     "measurement.**")
    head = ("| group | impl | median | x vs llm-compressor | x vs reference | x vs torch "
            "| throughput | mask mismatches |")
    current = None
    for op, g, rows in _ordered_groups(data):
        if op == "e2e":
            lines += _e2e_rows(g, rows, op != current)
            current = op
            continue
        if op == PAIRED:
            lines += _paired_rows(g, rows, op != current)
            current = op
            continue
        if op != current:
            current = op
            lines += ["", f"### {op}", "", head, "|---|---|---:|---:|---:|---:|---:|---:|"]
        med = {_impl(r): r["stats"]["median"] for r in rows}
        base = _baseline(list(med))
        peer, refm, torch_t = med.get(PEER), med.get(REFERENCE), med.get(base) if base else None
        for k, r in enumerate(sorted(rows, key=lambda r: -r["stats"]["median"])):
            t = r["stats"]["median"]
            extra = r["extra_info"]
            mism = extra.get("mask_mismatch")
            mism_s = f"{mism} / {extra.get('numel')}" if mism is not None else "-"
            lines.append(
                f"| {g if k == 0 else ''} | {_impl(r)} | {_seconds(t)} | {_ratio(peer, t)} "
                f"| {_ratio(refm, t)} | {_ratio(torch_t, t)} | {_rate(extra, t)} | {mism_s} |"
            )
    return "\n".join(lines)


def _e2e_rows(group: str, rows: list[dict], header: bool) -> list[str]:
    """End-to-end rows: prune seconds, ratio to llm-compressor, peak RSS, held-out perplexity."""
    out = []
    if header:
        out += ["", "### e2e", "",
                "| group | impl | prune time | x vs llm-compressor | peak RSS | held-out ppl "
                "(dense) | decoder sparsity |", "|---|---|---:|---:|---:|---:|---:|"]
    med = {_impl(r): r["stats"]["median"] for r in rows}
    peer = med.get(PEER)
    for k, r in enumerate(sorted(rows, key=lambda r: -r["stats"]["median"])):
        t, x = r["stats"]["median"], r["extra_info"]
        rss = x.get("peak_rss_bytes")
        out.append(
            f"| {group if k == 0 else ''} | {_impl(r)} | {_seconds(t)} | {_ratio(peer, t)} "
            f"| {f'{rss / 2**30:.2f} GiB' if rss else '-'} "
            f"| {x.get('ppl', float('nan')):.1f} ({x.get('dense_ppl', float('nan')):.1f}) "
            f"| {x.get('layer_sparsity', float('nan')):.3f} |"
        )
    return out


def _paired_rows(group: str, rows: list[dict], header: bool) -> list[str]:
    """Paired rows: each ssgr backend's median, the peer's median over the rounds that ran just
    before its own, and the median (min - max) of the per-round ratios."""
    out = []
    if header:
        out += ["", f"### {PAIRED}", "",
                "Each timed round of ssgr right after one round of llm-compressor; "
                "x = median of the per-round ratios.", "",
                "| group | impl | median | llm-compressor median | x vs llm-compressor "
                "| per-round x (min - max) | mask mismatches |",
                "|---|---|---:|---:|---:|---:|---:|"]
    for k, r in enumerate(rows):
        x = r["extra_info"]
        head = f"| {group if k == 0 else ''} | {_impl(r)} | {_seconds(r['stats']['median'])} "
        ratios = x.get("ratios")
        if not ratios:  # not timed (--benchmark-disable)
            out.append(head + "| - | - | - | - |")
            continue
        out.append(
            head + f"| {_seconds(statistics.median(x['peer_seconds']))} "
            f"| {x['ratio_median']:.2f} | {min(ratios):.2f} - {max(ratios):.2f} "
            f"| {x.get('mask_mismatch')} / {x.get('numel')} |"
        )
    return out


def _medians(rows: list[dict]) -> dict[str, float]:
    """``{impl: median seconds}`` of a group; a paired group also gets the peer's median."""
    med = {_impl(r): r["stats"]["median"] for r in rows}
    for r in rows:
        if r["extra_info"].get("peer_seconds"):
            med[PEER] = statistics.median(r["extra_info"]["peer_seconds"])
    return med


def _short_labels(names: list[str]) -> list[str]:
    """Group names without the words every name of the list starts or ends with."""
    words = [n.split() for n in names]
    if len(words) < 2:
        return names
    lead = 0
    while all(len(w) > lead + 1 and w[lead] == words[0][lead] for w in words):
        lead += 1
    trail = 0
    while all(len(w) > lead + trail + 1 and w[-1 - trail] == words[0][-1 - trail] for w in words):
        trail += 1
    return [" ".join(w[lead:len(w) - trail]) for w in words]


def _strip(group: str, op: str) -> str:
    """The group name without a leading op name and a trailing device."""
    words = group.split()
    if words and words[0] == op:
        words = words[1:]
    if len(words) > 1 and words[-1] in ("cpu", "cuda"):
        words = words[:-1]
    return " ".join(words)


def _plot_order(impl: str) -> tuple[int, str]:
    """Peers and baselines first, then ssgr's reference and its fast backends."""
    rank = {PEER: 0, REFERENCE: 2, "cpu": 3, "triton": 4, "cuda": 5}
    return (rank.get(impl, 1 if impl.startswith("torch") else 6), impl)


def plot(path: str, png: str) -> None:
    """One subplot per op: per group, each implementation's median relative to the group's
    reference (else llm-compressor, else the torch baseline), log scale; the base's absolute time
    is printed under each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    with open(path) as f:
        data = json.load(f)
    by_op: dict[str, list[tuple[str, dict[str, float]]]] = defaultdict(list)
    for op, g, rows in _ordered_groups(data):
        by_op[op].append((g, _medians(rows)))
    if not by_op:
        return
    impls = sorted({i for groups in by_op.values() for _, med in groups for i in med},
                   key=_plot_order)
    colors = {i: plt.get_cmap("tab10")(k % 10) for k, i in enumerate(impls)}
    widest = max(len(groups) for groups in by_op.values())
    fig, axes = plt.subplots(len(by_op), 1, squeeze=False,
                             figsize=(max(8.0, 1.1 * widest + 2), 3.4 * len(by_op)))
    for ax, (op, groups) in zip(axes[:, 0], by_op.items(), strict=True):
        labels = _short_labels([_strip(g, op) for g, _ in groups])
        bases = [next((b for b in (REFERENCE, PEER, _baseline(list(med))) if b in med),
                      max(med, key=med.get)) for _, med in groups]
        same = len(set(bases)) == 1
        ratios = [t / med[b] for (_, med), b in zip(groups, bases, strict=True)
                  for t in med.values()]
        for k, ((_, med), base) in enumerate(zip(groups, bases, strict=True)):
            present = [i for i in impls if i in med]
            width = 0.8 / len(present)
            for j, impl in enumerate(present):
                ax.bar(k - 0.4 + (j + 0.5) * width, med[impl] / med[base], width,
                       color=colors[impl])
            labels[k] = textwrap.fill(labels[k], 18) + "\n" + (
                _seconds(med[base]) if same else f"{base} {_seconds(med[base])}")
        ax.set_xticks(range(len(groups)))
        ax.set_xlim(-0.6, max(len(groups), 4) - 0.4)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(min(ratios) / 1.6, max(ratios) * 1.3)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if len(
            f"{v:g}") < 4 and f"{v:g}"[-1] in "25" else ""))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(f"time / {bases[0] if same else 'base'}")
        ax.set_title(f"{op} (lower is better; under each group: the "
                     f"{bases[0] if same else 'base'}'s median)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in impls]
    fig.legend(handles, impls, loc="upper center", ncol=min(len(impls), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("--png", help="also write a bar chart here")
    a = ap.parse_args()
    sys.stdout.write(table(a.results) + "\n")
    if a.png:
        plot(a.results, a.png)
