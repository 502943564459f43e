"""``ssgr eval``: pass@1 over k samples, response length and truncation, by difficulty level.

Samples are drawn with :func:`ssgr.data.generate.generate` (same chat template, per-sample seeds,
batching and answer checking as ``ssgr generate``) into a traces file, which makes an evaluation
resumable and leaves its held-out self-generated traces for ``ssgr ppl --traces``. The metrics
come from the traces (:func:`metrics_from_traces`):

* ``pass@1`` - the mean over problems of (correct samples / k), i.e. pass@1 averaged over k
  samples (with ``--greedy``: one greedy sample per problem, plain accuracy);
* ``mean_response_tokens`` - mean response length in tokens over all samples (EOS included when
  the model stopped by itself, as in TRACES.jsonl);
* ``truncation_rate`` - fraction of samples stopped by the token limit;
* ``no_answer_rate`` / ``flagged_rate`` - fraction with no extractable answer / any quality flag;

overall and per difficulty level (problems without a level are grouped under ``"none"``).
``overall["pass@1_ci"]`` is its 95% bootstrap confidence interval over problems (a problem's k
samples kept together; :mod:`ssgr.eval.stats`), and ``per_problem`` maps each problem id to its
``c = correct / k``, the input of paired comparisons between models
(:func:`ssgr.eval.stats.paired_bootstrap_diff`).
By default only the held-out split of the problems is used (``split="heldout"``, 20%, seed 0: the
split :func:`ssgr.data.problems.split_problems` defines), so calibration problems are never scored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssgr.data.errors import DataError
from ssgr.data.problems import Problem, select_problems
from ssgr.data.traces import Trace

logger = logging.getLogger(__name__)


def _summary(cs: list[float], traces: list[Trace]) -> dict[str, Any]:
    n = len(traces)
    return {
        "problems": len(cs),
        "samples": n,
        "pass@1": sum(cs) / len(cs) if cs else float("nan"),
        "mean_response_tokens": sum(t.num_tokens for t in traces) / n if n else float("nan"),
        "truncation_rate": sum(t.finish_reason == "length" for t in traces) / n
        if n
        else float("nan"),
        "no_answer_rate": sum("no_answer" in t.flags for t in traces) / n if n else float("nan"),
        "flagged_rate": sum(bool(t.flags) for t in traces) / n if n else float("nan"),
    }


def metrics_from_traces(
    traces: Sequence[Trace], problems: Sequence[Problem], k: int
) -> dict[str, Any]:
    """Overall and per-level metrics of the samples ``0..k-1`` of every problem.

    Every problem must have exactly ``k`` such samples (a :class:`DataError` names the first that
    does not); traces of other problems or with a sample index ``>= k`` are ignored.
    """
    if k < 1:
        raise DataError(f"--k must be >= 1, got {k}")
    if not problems:
        raise DataError("no problems to evaluate")
    by_id: dict[str, list[Trace]] = {p.id: [] for p in problems}
    for t in traces:
        if t.problem_id in by_id and t.sample < k:
            by_id[t.problem_id].append(t)
    per_level: dict[str, tuple[list[float], list[Trace]]] = {}
    all_c: list[float] = []
    all_t: list[Trace] = []
    for p in problems:
        ts = by_id[p.id]
        if len(ts) != k:
            raise DataError(f"problem {p.id!r} has {len(ts)} samples in the traces, expected k={k}")
        c = sum(t.correct for t in ts) / k
        all_c.append(c)
        all_t += ts
        key = str(p.level) if p.level is not None else "none"
        cs, tl = per_level.setdefault(key, ([], []))
        cs.append(c)
        tl += ts
    from ssgr.eval.stats import bootstrap_ci

    order = sorted(per_level, key=lambda s: (s == "none", int(s) if s.isdigit() else 0))
    overall = _summary(all_c, all_t)
    overall["pass@1_ci"] = bootstrap_ci(all_c)
    return {
        "overall": overall,
        "by_level": {lvl: _summary(*per_level[lvl]) for lvl in order},
        "per_problem": {p.id: c for p, c in zip(problems, all_c, strict=True)},
    }


def per_problem_scores(result: dict[str, Any]) -> dict[str, float]:
    """``{problem_id: c}`` of an :func:`evaluate` result; for a result written by an older ssgr
    (no ``per_problem``) it is recomputed from the result's traces file.

    Raises:
        DataError when neither is available.
    """
    if isinstance(result.get("per_problem"), dict):
        return {str(k): float(v) for k, v in result["per_problem"].items()}
    traces = result.get("traces")
    if not traces or not Path(traces).is_file():
        raise DataError(
            f"evaluation of {result.get('model')!r} has no per-problem scores and its traces "
            f"file {traces!r} is gone; re-run the evaluation (delete its json)"
        )
    from ssgr.data.traces import read_traces

    ts = read_traces(traces)
    by_id: dict[str, list[Trace]] = {}
    for t in ts:
        if t.sample < result["k"]:
            by_id.setdefault(t.problem_id, []).append(t)
    return {pid: sum(t.correct for t in v) / result["k"] for pid, v in by_id.items()}


def default_traces_path(out: str | os.PathLike[str]) -> Path:
    """Where the samples of an evaluation written to ``out`` go: ``EVAL.json`` ->
    ``EVAL.traces.jsonl``."""
    o = Path(out)
    return o.with_name(o.stem + ".traces.jsonl")


def evaluate(
    model: str | os.PathLike[str],
    problems: str | os.PathLike[str] | Sequence[Problem],
    *,
    k: int = 4,
    greedy: bool = False,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 32768,
    seed: int = 0,
    split: str = "heldout",
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    limit: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    dtype: str | None = None,
    out: str | os.PathLike[str] | None = None,
    traces: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` (``tiny``, ``smollm2`` or a directory) on ``problems``; returns the
    result.

    ``greedy`` means one greedy sample per problem (``k`` is then 1, temperature 0). Samples are
    appended to ``traces`` (default: beside ``out``, see :func:`default_traces_path`, or a
    temporary file when neither is given), so re-running resumes. ``out`` receives the result JSON.
    """
    from ssgr.models import resolve_model

    if k < 1:
        raise DataError(f"--k must be >= 1, got {k}")
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")
    if greedy:
        if k != 1:
            logger.info("--greedy: one greedy sample per problem (k=1 instead of %d)", k)
        k, temperature = 1, 0.0
    from ssgr.data.outputs import check_output
    from ssgr.io import output_lock

    if out is not None:
        check_output(out)
    if traces is not None:
        check_output(traces, "--traces")
    model_dir = resolve_model(model)
    probs = select_problems(problems, split, heldout_fraction, split_seed, limit)
    source = "<list>" if isinstance(problems, (list, tuple)) else str(problems)
    logger.info("eval %s: %d problems (%s, split %s) x k=%d", model, len(probs), source, split, k)

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if traces is None and out is not None:
        traces = default_traces_path(out)
    if traces is None:
        tmp = tempfile.TemporaryDirectory(prefix="ssgr-eval-")
        traces = Path(tmp.name) / "EVAL.traces.jsonl"
    lock = output_lock(out, "--out") if out is not None else contextlib.nullcontext()
    with lock:
        return _evaluate_locked(
            model, model_dir, probs, source, split, k, greedy, temperature, top_p,
            max_new_tokens, seed, heldout_fraction, split_seed, limit, batch_size, device, dtype,
            out, traces, tmp, progress,
        )


def _evaluate_locked(
    model: str | os.PathLike[str], model_dir: Path, probs: list[Problem], source: str,
    split: str, k: int, greedy: bool, temperature: float, top_p: float, max_new_tokens: int,
    seed: int, heldout_fraction: float, split_seed: int, limit: int | None, batch_size: int,
    device: str | None, dtype: str | None, out: str | os.PathLike[str] | None,
    traces: str | os.PathLike[str], tmp: tempfile.TemporaryDirectory[str] | None,
    progress: bool,
) -> dict[str, Any]:
    from ssgr.data.generate import generate
    from ssgr.data.traces import read_traces
    from ssgr.io import write_json_atomic

    try:
        generate(
            str(model_dir), probs, traces, n=k, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, device=device,
            dtype=dtype, progress=progress,
        )
        metrics = metrics_from_traces(read_traces(traces), probs, k)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result: dict[str, Any] = {
        "model": str(model),
        "model_dir": str(model_dir),
        "problems": source,
        "split": split,
        "k": k,
        "greedy": greedy,
        "settings": {
            "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
            "seed": seed, "heldout_fraction": heldout_fraction, "split_seed": split_seed,
            "limit": limit,
        },
        "traces": None if tmp is not None else str(traces),
        **metrics,
    }
    if out is not None:
        write_json_atomic(out, result)
        logger.info("wrote %s", out)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of the per-level and overall metrics of :func:`evaluate`'s result."""
    head = (
        f"{'level':<6} {'problems':>8} {'samples':>8} {'pass@1':>7} {'mean_tok':>9} "
        f"{'trunc':>6} {'no_ans':>6}"
    )
    rows = [head, "-" * len(head)]

    def row(name: str, m: dict[str, Any]) -> str:
        return (
            f"{name:<6} {m['problems']:>8d} {m['samples']:>8d} {m['pass@1']:>7.3f} "
            f"{m['mean_response_tokens']:>9.1f} {m['truncation_rate']:>6.3f} "
            f"{m['no_answer_rate']:>6.3f}"
        )

    for lvl, m in result["by_level"].items():
        rows.append(row(lvl, m))
    rows.append(row("all", result["overall"]))
    return "\n".join(rows)


def format_ci_line(result: dict[str, Any]) -> str | None:
    """The line ``ssgr eval`` prints under its table: overall pass@1 with its bootstrap CI
    (None for a result without one)."""
    ci = result["overall"].get("pass@1_ci")
    if not ci:
        return None
    from ssgr.eval.stats import format_ci

    return (
        f"pass@1 {format_ci(ci)}: {ci['level']:.0%} bootstrap CI over {ci['problems']} "
        f"problems (k samples kept together, B={ci['b']}, percentile)"
    )
