"""``make gpu``: the whole GPU run in one prepared call, sized for 8 minutes on an H100/H200
without internet; ``--dry-run`` (``make gpu-dry-run``, CI) rehearses the same steps on CPU.

Steps, each a subprocess with its own time budget (seconds; dry run in brackets):

1. ``build`` (150 [30]): ``pip install --no-build-isolation --no-deps --no-index -e .`` with
   ``TORCH_CUDA_ARCH_LIST=9.0a`` (the CUDA extension ``ssgr._cuda`` and ``ssgr._C``), then
   ``import ssgr._cuda``. Dry run: no CUDA build; checks that ``ssgr._C`` imports.
2. ``llm-compressor`` (15 [15], optional): imports it, else installs ``llmcompressor==0.14.0.1``
   from ``benchmarks/wheels`` (``--no-index``); without it the OBS peer is reported missing.
3. ``selftest`` (45 [45]): ``python -m ssgr selftest --device cuda`` (``cpu`` in a dry run). A
   tree without the command fails the run, except in a dry run, where the step says "absent".
4. ``tests`` (75 [60]): ``tests/ops/test_gpu_ops.py`` and ``tests/ops/test_precision.py``.
5. ``bench-goals`` (90 [45]): ``benchmarks/gpu.py`` (peaks, Hessian against
   ``torch.mm(X.T, X, out_dtype=float32)`` and the fp32 ``addmm``, SparseGPT against
   llm-compressor, masks against the reference and ``torch.kthvalue``) at R1-Distill-Qwen-14B
   shapes; dry run: ``--dry-run`` with ``TRITON_INTERPRET=1`` (tiny shapes).
6. ``bench-pytest`` (100 [60]): the pytest-benchmark set (``bench_hessian.py``, ``bench_masks.py``,
   ``bench_sparsegpt.py``) at the R1-Distill-Qwen-14B layers only, without the pure-torch
   SparseGPT reference (seconds per call at these shapes); dry run: the smoke shapes
   (``SSGR_BENCH_SMOKE=1``).

Results: ``<out>/<device>.json`` (every step's status, exit code, time, budget and output tail,
with the goal benchmarks' JSON inlined), ``<out>/<device>.md`` (the same as tables, with
``report.py``'s table of the pytest-benchmark run) and ``<out>/<device>.png`` (``report.py``'s
plot; needs matplotlib). Both files are rewritten after every step, so a failure or a timeout
keeps what the earlier steps produced; a step past its budget is killed (its process group) and
marked "timeout", and the run goes on with the next step. ``<device>`` is ``gpu-<name>`` (e.g.
``gpu-nvidia-h200``); ``<out>`` is ``benchmarks/results`` (a dry run: a temporary directory, so
it never touches the committed results). Exit status: 0 when every required step passed.

Usage: ``python benchmarks/gpu_run.py [--dry-run] [--out DIR] [--only STEP ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("ssgr.bench.gpu_run")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Output kept per step in the JSON (the end of stdout + stderr).
TAIL_CHARS = 3000
#: The model whose layer shapes the device run measures (a ``-k`` filter of the benchmark ids).
MODEL = "r1-distill-qwen-14b"
LLMC_PIN = "llmcompressor==0.14.0.1"


@dataclasses.dataclass
class Step:
    """One step: the commands it runs in order (all within ``budget`` seconds), in ``cwd``, with
    extra environment variables. ``required`` steps decide the exit status."""

    name: str
    budget: float
    commands: list[list[str]]
    cwd: Path = ROOT
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    required: bool = True
    absent_ok: bool = False  # a dry run tolerates a missing ``ssgr selftest``


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # ok | failed | timeout | absent | skipped
    budget: float
    seconds: float = 0.0
    rc: int | None = None
    command: str = ""
    tail: str = ""
    required: bool = True


def steps(dry: bool, py: str, out: Path, slug: str) -> list[Step]:
    """The run's steps (see the module docstring)."""
    goals_json = out / f"{slug}-goals.json"
    pytest_json = out / f"{slug}-pytest.json"
    if dry:
        build = Step("build", 30, [[py, "-c", "import ssgr._C; print('dry run: no CUDA build; "
                                              "ssgr._C imports')"]])
    else:
        build = Step(
            "build", 150,
            [[py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index",
              "-e", str(ROOT)],
             [py, "-c", "import torch, ssgr._cuda; assert torch.cuda.is_available(), 'no CUDA'"]],
            env={"TORCH_CUDA_ARCH_LIST": "9.0a", "MAX_JOBS": str(os.cpu_count() or 4)},
        )
    llmc_install = [py, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(HERE / "wheels"), LLMC_PIN]
    llmc = Step("llm-compressor", 15,
                [[py, "-c", "import importlib.util, subprocess, sys\n"
                            "if importlib.util.find_spec('llmcompressor') is None:\n"
                            f"    sys.exit(subprocess.call({llmc_install!r}))\n"
                            "print('llmcompressor importable')"]],
                required=False)
    selftest = Step("selftest", 45,
                    [[py, "-m", "ssgr", "selftest", "--device", "cpu" if dry else "cuda"]],
                    absent_ok=dry)
    tests = Step("tests", 60 if dry else 75,
                 [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=300",
                   "ops/test_gpu_ops.py", "ops/test_precision.py"]], cwd=ROOT / "tests")
    goal_cmd = [py, str(HERE / "gpu.py"), "--out", str(goals_json)]
    goals = Step("bench-goals", 45 if dry else 90, [goal_cmd + (["--dry-run"] if dry else [])],
                 env={"TRITON_INTERPRET": "1"} if dry else {})
    select = ("tiny and not paired" if dry else
              f"{MODEL} and not paired and not e2e and not (test_sparsegpt and reference)")
    bench = Step("bench-pytest", 60 if dry else 100,
                 [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                   str(HERE / "pytest.ini"), "--benchmark-only", f"--benchmark-json={pytest_json}",
                   "bench_hessian.py", "bench_masks.py", "bench_sparsegpt.py", "-k", select]],
                 cwd=HERE, env={"SSGR_BENCH_SMOKE": "1"} if dry else {})
    return [build, llmc, selftest, tests, goals, bench]


def _kill(proc: subprocess.Popen) -> None:
    """Ends the step's process group (started by us with its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step) -> Outcome:
    """Runs the step's commands in order until one fails or the budget is spent."""
    out = Outcome(step.name, "ok", step.budget, required=step.required)
    env = {**os.environ, **step.env}
    t0 = time.monotonic()
    text = ""
    for cmd in step.commands:
        out.command = " ".join(cmd)
        left = step.budget - (time.monotonic() - t0)
        proc = subprocess.Popen(cmd, cwd=step.cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            _kill(proc)
            stdout, _ = proc.communicate()
            text += stdout or ""
            out.status, out.rc = "timeout", None
            text += f"\n[gpu_run] {step.name}: killed after its budget of {step.budget:g} s\n"
            break
        text += stdout or ""
        out.rc = proc.returncode
        if proc.returncode != 0:
            absent = "invalid choice: 'selftest'" in (stdout or "")
            out.status = "absent" if absent else "failed"
            break
    out.seconds = time.monotonic() - t0
    out.tail = text[-TAIL_CHARS:]
    return out


def passed(o: Outcome, absent_ok: bool) -> bool:
    return o.status == "ok" or not o.required or (o.status == "absent" and absent_ok)


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def _rows_md(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def markdown(summary: dict, pytest_json: Path) -> str:
    """The run as markdown: steps, the goal benchmarks' rows and goals, report.py's table."""
    dry = summary["dry_run"]
    parts = [f"# ssgr GPU run: {summary['device']}", ""]
    if dry:
        parts += ["Dry run (tiny shapes on CPU, triton in its interpreter): a rehearsal of "
                  "`make gpu`; no number below is a GPU measurement.", ""]
    parts += ["| step | status | seconds | budget (s) | exit |", "|---|---|---|---|---|"]
    for s in summary["steps"]:
        parts.append(f"| {s['name']} | {s['status']}{'' if s['required'] else ' (optional)'} | "
                     f"{s['seconds']:.1f} | {s['budget']:g} | {s['rc']} |")
    goals = summary.get("bench_goals")
    if goals:
        for key in ("hessian", "sparsegpt", "masks"):
            if goals.get(key):
                parts += ["", f"## {key}", "", _rows_md(goals[key])]
        if goals.get("goals"):
            parts += ["", "## goals", "", _rows_md([goals["goals"]])]
    if pytest_json.exists():
        sys.path.insert(0, str(HERE))
        from report import table

        parts += ["", "## pytest-benchmark", "", table(str(pytest_json))]
    return "\n".join(parts) + "\n"


def write(summary: dict, out: Path, slug: str) -> None:
    """Rewrites ``<slug>.json`` and ``<slug>.md`` from what the run has so far."""
    goals = _load(out / f"{slug}-goals.json")
    if goals is not None:
        summary["bench_goals"] = goals
    (out / f"{slug}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{slug}.md").write_text(markdown(summary, out / f"{slug}-pytest.json"))


def plot(out: Path, slug: str) -> str:
    """``<slug>.png`` from the pytest-benchmark run; returns what happened."""
    src = out / f"{slug}-pytest.json"
    if not src.exists():
        return "no PNG: the pytest-benchmark step left no results"
    sys.path.insert(0, str(HERE))
    try:
        from report import plot as report_plot

        report_plot(str(src), str(out / f"{slug}.png"))
    except ImportError as exc:
        return f"no PNG ({exc}); install matplotlib for it"
    return f"wrote {out / f'{slug}.png'}"


def device_slug(dry: bool) -> tuple[str, str]:
    """``(name, slug)`` of the device the run measures."""
    if dry:
        return "CPU (dry run)", "dry-run-cpu"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: `make gpu` runs on a GPU machine; "
                         "`make gpu-dry-run` rehearses it on CPU")
    name = torch.cuda.get_device_name(0)
    return name, "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="the same steps at tiny shapes on CPU (no CUDA build), for CI")
    ap.add_argument("--out", type=Path, default=None,
                    help="results directory (default: benchmarks/results; dry run: a temp dir)")
    ap.add_argument("--only", nargs="+", default=None, metavar="STEP",
                    help="run only these steps (build, llm-compressor, selftest, tests, "
                         "bench-goals, bench-pytest)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the steps")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dry = args.dry_run
    out = args.out or (Path(tempfile.gettempdir()) / "ssgr-gpu-dry-run" if dry
                       else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    name, slug = device_slug(dry)
    for stale in (f"{slug}-goals.json", f"{slug}-pytest.json"):
        (out / stale).unlink(missing_ok=True)
    plan = steps(dry, args.python, out, slug)
    if args.only:
        unknown = set(args.only) - {s.name for s in plan}
        if unknown:
            ap.error(f"unknown steps {sorted(unknown)}")
    summary: dict = {"device": name, "dry_run": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "steps": []}
    t0 = time.monotonic()
    ok = True
    for step in plan:
        if args.only and step.name not in args.only:
            outcome = Outcome(step.name, "skipped", step.budget, required=False)
        else:
            log.info("[gpu_run] %s (budget %g s)", step.name, step.budget)
            outcome = run_step(step)
            log.info("[gpu_run] %s: %s in %.1f s", step.name, outcome.status, outcome.seconds)
            if outcome.status != "ok":
                log.info("%s", outcome.tail[-1500:])
        ok &= passed(outcome, step.absent_ok)
        summary["steps"].append(dataclasses.asdict(outcome))
        summary["seconds"] = time.monotonic() - t0
        write(summary, out, slug)
    summary["png"] = plot(out, slug)
    summary["passed"] = ok
    write(summary, out, slug)
    log.info("[gpu_run] %s in %.0f s; %s; results in %s/%s.{json,md,png}",
             "passed" if ok else "FAILED", summary["seconds"], summary["png"], out, slug)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
