"""The paper's claims, one by one, against a finished ``ssgr run`` (issue #20: "Does SSGR help?").

Usage::

    python benchmarks/claims.py RUN_DIR --name NAME [--results-dir benchmarks/results]
                                [--command "the ssgr run command line"] [--note "text"]

Reads ``RUN_DIR`` (written by ``ssgr run``, ideally with ``--ablations`` and ``--calib-seeds``)
and writes ``benchmarks/results/claims-NAME.json``, ``.md`` and ``.png``.

The claims (SSGR, Xiang et al., "Think Before You Prune: Selective Self-Generated Calibration for
Pruning Large Reasoning Models", arXiv 2511.18864) and the comparisons that test them, each a
difference of pass@1 between two calibration sources pruned and evaluated on the same held-out
problems:

1. self-generated reasoning calibration beats generic text by 10-13%: ``ssgr - text`` (primary)
   and ``sgr - text`` (self-generated without the SSGR selection);
2. hard problems beat easy ones by 6-9%: ``hard - easy`` (primary), ``hard - medium`` shown;
3. median-length traces beat the shortest and the longest by 2-3%: ``ssgr - short`` and
   ``ssgr - long`` (both primary; ``ssgr`` keeps the lower-median clean correct sample, the same
   pick as the ``median`` strategy, :func:`ssgr.data.select.lower_median`);
4. rows the run also answers, with no figure from the paper: ``ssgr - sgr`` (the value of the
   SSGR filter), ``ssgr - gold``, ``ssgr-response - ssgr`` and ``no-think - ssgr``.

Units. The abstract gives "10-13%" without a unit; this script reads all three figures as
*accuracy retained relative to the dense model* (retained = pruned pass@1 / dense pass@1), so a
claimed gain of 10-13% is ``retained(A) - retained(B)`` in [0.10, 0.13]. Every difference is
shown both ways: absolute pass@1 points and retained (the absolute difference divided by the dense
pass@1, which is treated as a constant: its own sampling error is not in the retained CI).

Statistics (:mod:`ssgr.eval.stats`). Calibration draws (``--calib-seeds``) are pooled per problem:
for each source, a problem's correctness ``c_i = correct / k`` is averaged over the draws in which
*both* compared sources were evaluated, then one paired (by problem) percentile bootstrap of the
difference of those averages is taken (B = 2000, 95%, seed 0). The pooled CI therefore covers the
sampling of problems and of responses, not the choice of calibration draw: the spread between
draws is shown beside it (each draw's own paired difference and CI, and their mean, std, min and
max).

Verdicts, per comparison, in the paper's direction (A better than B) and unit:
``reproduced`` when the 95% CI lies above 0; ``contradicted`` when it lies below 0; ``not
reproduced`` when it covers 0 but lies wholly below the paper's lowest figure (an effect, if any,
smaller than claimed); ``not resolved`` otherwise; ``not testable`` when the two sources'
calibration sets (``calib/<source>.jsonl``, token ids) are the same in every draw, so the pruned
models are too (on ``tiny`` every correct response of a problem has the same length, so ``short``,
``ssgr`` and ``long`` pick the same tokens); ``not run`` when the run lacks one of the two sources
(no value is invented). Rows without a paper figure get ``A higher`` / ``A lower`` /
``not resolved`` by the same CI rule. A claim's verdict combines its primary comparisons: all
reproduced -> reproduced; else the first of contradicted, not run, not testable, not reproduced
that one of them has; else not resolved.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssgr.errors import InputError
from ssgr.io import iter_jsonl, write_json_atomic, write_text_atomic

log = logging.getLogger("claims")

ROOT = Path(__file__).resolve().parent.parent
PAPER = "Xiang et al., arXiv 2511.18864 (SSGR)"
UNIT_READING = (
    "the paper's figures are read as accuracy retained relative to the dense model "
    "(retained = pruned pass@1 / dense pass@1); a gain of 10-13% is retained(A) - retained(B) "
    "in [0.10, 0.13]. The abstract gives no unit; absolute pass@1 points are shown too."
)
POOLING = (
    "per-problem correctness c_i = correct/k averaged over the calibration draws in which both "
    "sources were evaluated, then one paired (by problem) percentile bootstrap of the difference "
    "(B = 2000, 95%, seed 0); the pooled CI covers problems and responses, not the choice of "
    "calibration draw: each draw's own difference is shown beside it"
)
VERDICTS = {
    "reproduced": "the 95% CI of A - B lies above 0 (the paper's direction)",
    "contradicted": "the 95% CI lies below 0 (against the paper)",
    "not reproduced": "the CI covers 0 and lies wholly below the paper's lowest figure (an effect, "
                      "if any, smaller than claimed)",
    "not resolved": "the CI covers 0 and reaches the paper's figure (the run cannot tell)",
    "not testable": "the two sources' calibration sets are token-for-token the same in every draw "
                    "(so are the pruned models): the run cannot test the claim",
    "not run": "the run lacks one of the two sources",
}


@dataclass(frozen=True)
class Comparison:
    """``a - b`` in pass@1; ``primary`` comparisons decide their claim's verdict."""

    a: str
    b: str
    primary: bool = True

    @property
    def label(self) -> str:
        return f"{self.a} - {self.b}"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: its figure (``paper``: low, high in retained units; None for the
    rows the paper gives no figure for) and the comparisons that test it."""

    key: str
    text: str
    paper: tuple[float, float] | None
    comparisons: tuple[Comparison, ...]
    shown: tuple[str, ...] = field(default=())


CLAIMS = (
    Claim("self-generated", "self-generated reasoning calibration over generic text",
          (0.10, 0.13), (Comparison("ssgr", "text"), Comparison("sgr", "text", primary=False))),
    Claim("difficulty", "hard problems over easy ones", (0.06, 0.09),
          (Comparison("hard", "easy"), Comparison("hard", "medium", primary=False)),
          shown=("medium",)),
    Claim("length", "median-length traces over the shortest and the longest", (0.02, 0.03),
          (Comparison("ssgr", "short"), Comparison("ssgr", "long"))),
    Claim("filter", "the SSGR filter over unselected self-generated traces",
          None, (Comparison("ssgr", "sgr"),)),
    Claim("gold", "self-generated traces over the dataset's gold solutions",
          None, (Comparison("ssgr", "gold"),)),
    Claim("response-tokens", "Hessians from response tokens only", None,
          (Comparison("ssgr-response", "ssgr"),)),
    Claim("no-think", "traces with the thinking removed", None,
          (Comparison("no-think", "ssgr"),)),
)


# ---------------------------------------------------------------------------------------------
# reading a run directory


@dataclass
class Draw:
    """One calibration draw: its seed, directory and ``{source: {problem_id: c}}``."""

    seed: int
    dir: Path
    scores: dict[str, dict[str, float]]


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: {what} is not valid JSON (line {e.lineno}: {e.msg}); "
                         "re-run `ssgr run` into that directory to rewrite it") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} must be a JSON object")
    return data


def _eval_scores(path: Path) -> dict[str, float]:
    from ssgr.eval.accuracy import per_problem_scores

    try:
        return per_problem_scores(_load_json(path, "an evaluation"))
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: not an `ssgr eval` result (missing {e}); delete it and re-run "
                         "`ssgr run` to evaluate that model again") from e


def read_run(run: Path) -> tuple[dict[str, Any], dict[str, float], list[Draw]]:
    """The run's config, the dense model's per-problem scores and its calibration draws.

    Draws: ``RUN/eval`` (the draw of the run's ``--seed``) and every ``RUN/draws/seed-S/eval``;
    a draw's sources are the ``eval/<source>.json`` files it holds.

    Raises:
        InputError when ``run`` is not a directory, or lacks ``run_config.json`` or
        ``eval/dense.json``.
    """
    if not run.is_dir():
        raise InputError(f"run directory {run} does not exist; give the --out of a finished "
                         "`ssgr run`")
    cfg_path = run / "run_config.json"
    if not cfg_path.is_file():
        raise InputError(f"{cfg_path} is missing: {run} is not an `ssgr run` directory (or the "
                         "run stopped before it started); run `ssgr run --out {run}` first")
    cfg = _load_json(cfg_path, "the run's settings")
    dense_path = run / "eval" / "dense.json"
    if not dense_path.is_file():
        raise InputError(f"{dense_path} is missing: the run has not evaluated the dense model "
                         f"yet; finish it with `ssgr run` (same options, --out {run})")
    dense = _eval_scores(dense_path)
    dirs: list[tuple[int, Path]] = [(int(cfg.get("seed", 0)), run)]
    extra = sorted(
        (int(p.name.removeprefix("seed-")), p) for p in (run / "draws").glob("seed-*")
        if p.is_dir() and p.name.removeprefix("seed-").lstrip("-").isdigit()
    )
    dirs += extra
    draws = []
    for seed, d in dirs:
        # eval/<source>.json; not dense.json, nor the traces' meta files (<name>.traces...json)
        scores = {
            p.stem: _eval_scores(p) for p in sorted((d / "eval").glob("*.json"))
            if p.stem != "dense" and "." not in p.stem
        }
        if scores:
            draws.append(Draw(seed, d, scores))
    return cfg, dense, draws


# ---------------------------------------------------------------------------------------------
# statistics


def _aligned(maps: Sequence[dict[str, float]], what: str) -> tuple[list[str], np.ndarray]:
    """Problem ids (order of the first map) and the ``[len(maps), n]`` score matrix."""
    ids = list(maps[0])
    for i, m in enumerate(maps[1:], 1):
        only = sorted(set(ids) ^ set(m))
        if only:
            shown = ", ".join(repr(x) for x in only[:5])
            raise InputError(f"{what} (file {i + 1} of {len(maps)}): {len(only)} problem(s) "
                             f"scored in only one of the evaluations ({shown}); every evaluation "
                             "of a run must cover the same held-out problems: re-run the "
                             "evaluation with the run's --eval-problems and --k")
    return ids, np.array([[m[i] for i in ids] for m in maps], dtype=np.float64)


def _ci_dict(ci: dict[str, Any]) -> dict[str, Any]:
    return {k: ci[k] for k in ("estimate", "lo", "hi", "level", "b", "seed", "problems", "method")}


def _scaled(ci: dict[str, Any], by: float) -> dict[str, Any]:
    out = dict(ci)
    for k in ("estimate", "lo", "hi"):
        out[k] = ci[k] / by
    return out


def verdict(ci: dict[str, Any] | None, paper: tuple[float, float] | None) -> str:
    """The verdict of one comparison from its CI in the paper's unit (``lo``, ``hi``) and the
    paper's figure (low, high; None: no figure). See the module docstring."""
    if ci is None:
        return "not run"
    if paper is None:
        return "A higher" if ci["lo"] > 0 else "A lower" if ci["hi"] < 0 else "not resolved"
    if ci["lo"] > 0:
        return "reproduced"
    if ci["hi"] < 0:
        return "contradicted"
    if ci["hi"] < paper[0]:
        return "not reproduced"
    return "not resolved"


def claim_verdict(verdicts: Sequence[str]) -> str:
    """Combine the verdicts of a claim's primary comparisons (module docstring)."""
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    for v in ("contradicted", "not run", "not testable", "not reproduced"):
        if v in verdicts:
            return v
    if all(v == "A higher" for v in verdicts):
        return "A higher"
    if all(v == "A lower" for v in verdicts):
        return "A lower"
    return "not resolved"


def _calib_tokens(path: Path) -> list[tuple[int, ...]] | None:
    """The sorted token-id sequences of a ``calib/<source>.jsonl`` (None when it is missing or
    holds text without token ids)."""
    if not path.is_file():
        return None
    seqs = []
    for _, row in iter_jsonl(path, "calibration"):
        ids = row.get("input_ids")
        if ids is None:
            return None
        seqs.append(tuple(ids))
    return sorted(seqs)


def same_calibration(draws: Sequence[Draw], a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` were pruned from token-for-token the same calibration set in every
    draw (sources pruned with other ``--calib-tokens``, such as ``ssgr-response``, never are)."""
    from ssgr.run import DERIVED_SOURCES

    if not draws or a in DERIVED_SOURCES or b in DERIVED_SOURCES:
        return False
    for d in draws:
        ta = _calib_tokens(d.dir / "calib" / f"{a}.jsonl")
        if ta is None or ta != _calib_tokens(d.dir / "calib" / f"{b}.jsonl"):
            return False
    return True


def compare(cmp: Comparison, draws: Sequence[Draw], dense_pass1: float,
            paper: tuple[float, float] | None) -> dict[str, Any]:
    """One comparison ``a - b``: pooled paired bootstrap over the draws holding both sources,
    each draw's own paired difference, and the verdict.

    Returns ``{"a", "b", "primary", "verdict", "draws", "missing"}`` and, when both ran,
    ``"abs"`` (pass@1 points) and ``"retained"`` (divided by ``dense_pass1``) CIs, ``"per_draw"``,
    ``"spread"`` (of the per-draw estimates) and ``"same_calibration"``
    (:func:`same_calibration`).
    """
    from ssgr.eval.stats import paired_bootstrap_diff, spread

    used = [d for d in draws if cmp.a in d.scores and cmp.b in d.scores]
    row: dict[str, Any] = {"a": cmp.a, "b": cmp.b, "label": cmp.label, "primary": cmp.primary,
                           "paper": list(paper) if paper else None}
    if not used:
        present = {s for d in draws for s in d.scores}
        row.update(verdict="not run", draws=[],
                   missing=[s for s in (cmp.a, cmp.b) if s not in present])
        return row
    ids, a = _aligned([d.scores[cmp.a] for d in used], f"{cmp.a} across draws")
    _, b = _aligned([used[0].scores[cmp.a]] + [d.scores[cmp.b] for d in used],
                    f"{cmp.a} vs {cmp.b}")
    b = b[1:]
    pooled = _ci_dict(paired_bootstrap_diff(a.mean(axis=0), b.mean(axis=0)))
    per_draw = []
    for d, ra, rb in zip(used, a, b, strict=True):
        ci = paired_bootstrap_diff(ra, rb)
        per_draw.append({"seed": d.seed, "estimate": ci["estimate"], "lo": ci["lo"],
                         "hi": ci["hi"], "a_pass1": float(ra.mean()),
                         "b_pass1": float(rb.mean())})
    retained = _scaled(pooled, dense_pass1) if dense_pass1 > 0 else None
    same = same_calibration(used, cmp.a, cmp.b)
    row.update(
        same_calibration=same,
        draws=[d.seed for d in used], missing=[], problems=len(ids),
        a_pass1=float(a.mean()), b_pass1=float(b.mean()),
        abs=pooled, retained=retained,
        per_draw=per_draw, spread=spread([p["estimate"] for p in per_draw]),
        verdict="not testable" if same else verdict(retained if retained else pooled, paper),
    )
    return row


def source_table(draws: Sequence[Draw], dense_pass1: float,
                 order: Sequence[str] = ()) -> dict[str, Any]:
    """Per source (in ``order``, then the others by name): pass@1 pooled over its draws
    (per-problem average) with a bootstrap CI, retained, and each draw's pass@1."""
    from ssgr.eval.stats import bootstrap_ci, spread

    found = {s for d in draws for s in d.scores}
    names = [s for s in order if s in found] + sorted(found - set(order))
    out = {}
    for name in names:
        used = [d for d in draws if name in d.scores]
        _, m = _aligned([d.scores[name] for d in used], f"{name} across draws")
        ci = _ci_dict(bootstrap_ci(m.mean(axis=0)))
        per = [float(r.mean()) for r in m]
        out[name] = {"pass1": ci, "retained": ci["estimate"] / dense_pass1 if dense_pass1 else None,
                     "per_draw": dict(zip((str(d.seed) for d in used), per, strict=True)),
                     "spread": spread(per)}
    return out


# ---------------------------------------------------------------------------------------------
# the report


def _commit() -> dict[str, Any]:
    """This checkout's git commit (and whether it has uncommitted changes), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "ssgr", "csrc", "kernels", "setup.py"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def run_command(cfg: dict[str, Any]) -> str:
    """An ``ssgr run`` command line equivalent to the run's resolved settings
    (``run_config.json``: the sizes are the preset's values filled in, the sources include the
    ablations)."""
    parts = ["ssgr run"]
    flags = ("model", "method", "sparsity", "problems", "sources", "n", "calib_problems",
             "num_sequences", "eval_problems", "k", "max_new_tokens", "tau", "corpus",
             "generator", "calib_seeds", "seed", "device", "out")
    for key in flags:
        v = cfg.get(key)
        if v is None:
            continue
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(v))}")
    return " \\\n    ".join(parts)


def build(run: Path, name: str, command: str | None = None,
          note: str | None = None) -> dict[str, Any]:
    """Everything the table shows, plus the run's settings (see the module docstring).

    Raises:
        InputError for a run directory without settings, dense evaluation or any evaluated
        calibration source, or with evaluations of different problems.
    """
    import ssgr
    from ssgr.eval.stats import bootstrap_ci

    cfg, dense, draws = read_run(run)
    if not draws:
        raise InputError(f"{run}: no calibration source has been evaluated yet (no "
                         f"{run}/eval/<source>.json besides dense.json); finish the run first")
    dense_ci = _ci_dict(bootstrap_ci(list(dense.values())))
    dense_pass1 = dense_ci["estimate"]
    key_path = run / "run_key.json"
    results_path = run / "results.json"
    results = _load_json(results_path, "the run's results") if results_path.is_file() else {}
    calib: dict[str, dict[str, Any]] = {}
    for d in results.get("draws") or [{"seed": cfg.get("seed", 0), "rows": results.get("rows",
                                                                                         {})}]:
        for src, r in d["rows"].items():
            if r.get("calib"):
                calib.setdefault(src, {})[str(d["seed"])] = r["calib"]
    claims = []
    for c in CLAIMS:
        rows = [compare(cmp, draws, dense_pass1, c.paper) for cmp in c.comparisons]
        claims.append({
            "key": c.key, "claim": c.text,
            "paper": {"low": c.paper[0], "high": c.paper[1], "unit": "retained"} if c.paper
            else None,
            "verdict": claim_verdict([r["verdict"] for r in rows if r["primary"]]),
            "comparisons": rows, "shown": list(c.shown),
        })
    return {
        "name": name,
        "run": str(run),
        "paper": PAPER,
        "unit_reading": UNIT_READING,
        "pooling": POOLING,
        "verdict_rules": VERDICTS,
        "ssgr_version": ssgr.__version__,
        "ssgr_checkout": _commit(),
        "config": cfg,
        "run_key": _load_json(key_path, "the run key") if key_path.is_file() else None,
        "command": command,
        "note": note,
        "equivalent_command": run_command(cfg),
        "run_wall_s": results.get("wall_s"),
        "sizes": {
            "eval_problems": len(dense), "k": cfg.get("k"), "n": cfg.get("n"),
            "calib_problems": cfg.get("calib_problems"),
            "num_sequences": cfg.get("num_sequences"),
            "draws": [d.seed for d in draws], "calib": calib,
        },
        "dense": {"pass1": dense_ci},
        "sources": source_table(draws, dense_pass1, cfg.get("sources") or ()),
        "claims": claims,
    }


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _ci_pct(ci: dict[str, Any] | None) -> str:
    if not ci:
        return "-"
    return f"{_pct(ci['estimate'])} [{_pct(ci['lo'])}, {_pct(ci['hi'])}]"


def format_markdown(rep: dict[str, Any]) -> str:
    """The ``claims-NAME.md`` page: the claim table, the sources, the settings and the rules."""
    cfg = rep["config"]
    lines = [
        f"# Does SSGR help? Claim by claim on `{cfg.get('model')}` ({rep['name']})",
        "",
        f"Run `{rep['run']}`: {cfg.get('method')} {cfg.get('sparsity')}, pass@1 over "
        f"k={rep['sizes']['k']} samples on {rep['sizes']['eval_problems']} held-out problems, "
        f"{len(rep['sizes']['draws'])} calibration draw(s) (seeds "
        f"{', '.join(str(s) for s in rep['sizes']['draws'])}); dense pass@1 "
        f"{rep['dense']['pass1']['estimate']:.3f} [{rep['dense']['pass1']['lo']:.3f}, "
        f"{rep['dense']['pass1']['hi']:.3f}]. Paper: {rep['paper']}.",
        "",
        "Differences are A - B, paired by problem, 95% bootstrap CI, pooled over the draws; "
        "**retained** is in points of the dense model's accuracy (the paper's unit as read here), "
        "**abs** in pass@1 points (both x100).",
        "",
        "| claim | comparison | paper (retained) | ours: retained [95% CI] | ours: abs [95% CI] "
        "| per draw (abs) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rep["claims"]:
        paper = (f"+{100 * c['paper']['low']:.0f} to +{100 * c['paper']['high']:.0f}"
                 if c["paper"] else "-")
        for i, r in enumerate(c["comparisons"]):
            label = r["label"] + ("" if r["primary"] else " (shown)")
            head = f"{c['claim']} (**{c['verdict']}**)" if i == 0 else ""
            if r["verdict"] == "not run":
                lines.append(f"| {head} | {label} | {paper if r['primary'] else '-'} | not run "
                             f"(no {', '.join(r['missing'])}) | - | - | not run |")
                continue
            per = ", ".join(_pct(p["estimate"]) for p in r["per_draw"])
            sp = r["spread"]
            per += f" (std {100 * sp['std']:.1f})" if sp["draws"] > 1 else ""
            lines.append(
                f"| {head} | {label} | {paper if r['primary'] else '-'} | "
                f"{_ci_pct(r['retained'])} | {_ci_pct(r['abs'])} | {per} | {r['verdict']} |"
            )
    lines += [
        "",
        "## Calibration sources",
        "",
        "| source | pass@1 pooled [95% CI] | retained | per draw | calib seqs/tokens (per draw) |",
        "|---|---|---|---|---|",
        f"| dense | {rep['dense']['pass1']['estimate']:.3f} [{rep['dense']['pass1']['lo']:.3f}, "
        f"{rep['dense']['pass1']['hi']:.3f}] | 1.000 | - | - |",
    ]
    for name, s in rep["sources"].items():
        ci = s["pass1"]
        per = ", ".join(f"{v:.3f}" for v in s["per_draw"].values())
        cal = rep["sizes"]["calib"].get(name, {})
        cals = ", ".join(f"{v['sequences']}/{v['tokens']}" for v in cal.values()) or "-"
        ret = f"{s['retained']:.3f}" if s["retained"] is not None else "-"
        lines.append(f"| {name} | {ci['estimate']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] | {ret} "
                     f"| {per} | {cals} |")
    wall = rep.get("run_wall_s")
    lines += [
        "",
        "## How to read it",
        "",
        f"* Units: {rep['unit_reading']}",
        f"* Pooling over calibration draws: {rep['pooling']}.",
        "* Verdicts (per comparison, in the paper's direction A > B and unit; a claim's verdict "
        "combines its primary comparisons, rows marked (shown) do not count):",
    ]
    lines += [f"  * **{k}**: {v}" for k, v in rep["verdict_rules"].items()]
    lines += [
        "  * rows without a paper figure: **A higher** / **A lower** when the CI excludes 0, "
        "else **not resolved**.",
        "* `ssgr` keeps each problem's lower-median-length clean correct sample (the `median` "
        "pick), so claim 3 compares `ssgr` with `short` and `long`.",
        "",
        "## Reproduce",
        "",
        "The run" + (" (as run):" if rep.get("command") else " (equivalent to its "
                     "run_config.json):"),
        "",
        "```bash",
        rep.get("command") or rep["equivalent_command"],
        "```",
        "",
    ]
    if rep.get("command"):
        lines += ["Equivalent, from run_config.json:", "", "```bash", rep["equivalent_command"],
                  "```", ""]
    if rep.get("note"):
        lines += [rep["note"], ""]
    chk = rep["ssgr_checkout"]
    lines += [
        "The table:",
        "",
        "```bash",
        f"python benchmarks/claims.py {rep['run']} --name {rep['name']}",
        "```",
        "",
        f"ssgr {rep['ssgr_version']}, table written from commit {chk.get('commit')}"
        + (" (with uncommitted changes in ssgr/)" if chk.get("dirty") else "")
        + (f"; the run's results.json records {wall:.0f} s of wall time for its last "
           "invocation" if isinstance(wall, (int, float)) else "") + ".",
        "",
    ]
    return "\n".join(lines)


def plot(rep: dict[str, Any], png: Path) -> bool:
    """Each comparison's retained difference with its 95% CI (error bar), each draw's estimate
    (dots) and the paper's figure (a red band from its low to its high end, a marker at its
    middle). Returns False (WARNING naming the extra) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        from ssgr.errors import missing_extra

        log.warning("%s; %s not written", missing_extra("matplotlib", "the claims plot"), png)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(c, r) for c in rep["claims"] for r in c["comparisons"]]
    dense = rep["dense"]["pass1"]["estimate"] or 1.0
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    labels = []
    for y, (c, r) in zip(ys, rows, strict=True):
        labels.append(r["label"] + ("" if r["primary"] else " (shown)"))
        if c["paper"] and r["primary"]:
            lo, hi = 100 * c["paper"]["low"], 100 * c["paper"]["high"]
            ax.fill_betweenx([y - 0.3, y + 0.3], lo, hi, color="C3", alpha=0.25, lw=0)
            ax.plot([(lo + hi) / 2], [y], marker="D", ls="none", color="C3", ms=6,
                    label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None)
        if r["verdict"] == "not run":
            ax.annotate("not run", (0, y), xytext=(4, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=7, color="0.4")
            continue
        ci = r["retained"] or r["abs"]
        est = 100 * ci["estimate"]
        ax.errorbar([est], [y], xerr=[[est - 100 * ci["lo"]], [100 * ci["hi"] - est]], fmt="o",
                    color="C0" if r["primary"] else "0.5", capsize=3,
                    label="ours, 95% CI" if "ours, 95% CI" not in ax.get_legend_handles_labels()[1]
                    else None)
        xs = [100 * p["estimate"] / dense for p in r["per_draw"]]
        if len(xs) > 1:
            ax.plot(xs, [y + 0.22] * len(xs), "k.", ms=3,
                    label="per draw" if "per draw" not in ax.get_legend_handles_labels()[1]
                    else None)
        right = 100 * ci["hi"]
        if c["paper"] and r["primary"]:  # the label right of the paper's band too
            right = max(right, 100 * c["paper"]["high"])
        ax.annotate(r["verdict"], (right, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("difference A - B, points of dense accuracy retained (x100)")
    cfg = rep["config"]
    ax.set_title(f"{cfg.get('model')} {cfg.get('method')} {cfg.get('sparsity')}: paper's claims vs "
                 f"this run ({len(rep['sizes']['draws'])} draws, {rep['sizes']['eval_problems']} "
                 "problems)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        tmp.replace(png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return True


def write(rep: dict[str, Any], results_dir: Path) -> dict[str, Path]:
    """Write ``claims-NAME.json``, ``.md`` and ``.png`` (the png only with matplotlib) into
    ``results_dir``; returns the paths written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"claims-{rep['name']}"
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    write_json_atomic(paths["json"], rep)
    write_text_atomic(paths["md"], format_markdown(rep))
    if plot(rep, stem.with_suffix(".png")):
        paths["png"] = stem.with_suffix(".png")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the --out directory of a finished `ssgr run`")
    ap.add_argument("--name", required=True,
                    help="writes claims-NAME.{json,md,png} (e.g. tiny, smollm2)")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results",
                    help="where to write them (default benchmarks/results)")
    ap.add_argument("--command", default=None,
                    help="the ssgr run command line as it was run (shown in the .md)")
    ap.add_argument("--note", default=None,
                    help="a paragraph for the .md's Reproduce section (machine, wall time)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise SystemExit(f"error: --name {args.name!r}: give a plain name such as tiny")
    try:
        rep = build(args.run, args.name, args.command, args.note)
    except InputError as e:
        log.error("%s", e)
        return 2
    paths = write(rep, args.results_dir)
    for c in rep["claims"]:
        log.info("%-75s %s", c["claim"], c["verdict"])
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
