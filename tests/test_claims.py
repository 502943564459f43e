"""``benchmarks/claims.py``: the claim-by-claim table from a run directory. Hand-made run
directories (fake evaluation files with a known answer) and one small real ``ssgr run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import claims  # noqa: E402  (benchmarks/ is not a package)

from ssgr.errors import InputError  # noqa: E402


def _write_eval(path: Path, scores: dict[str, float], k: int = 2) -> None:
    """An evaluation file as ``ssgr eval`` writes it (:func:`metrics_from_traces` over hand-made
    traces), for per-problem correctness ``scores`` (multiples of 1/k)."""
    from ssgr.data.problems import Problem
    from ssgr.data.traces import Trace
    from ssgr.eval.accuracy import metrics_from_traces

    problems = [Problem(id=pid, question="1+1", answer="2", level=1) for pid in scores]
    traces = [
        Trace(problem_id=pid, sample=j, prompt="1+1", response="2", num_tokens=3,
              finish_reason="stop", answer="2", correct=j < round(c * k), flags=[])
        for pid, c in scores.items() for j in range(k)
    ]
    res = metrics_from_traces(traces, problems, k)
    assert res["per_problem"] == pytest.approx(scores)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": path.stem, "k": k, "traces": None, **res}))
    # what an evaluation leaves beside its json: not an evaluation
    path.with_name(f"{path.stem}.traces.jsonl.meta.json").write_text('{"model": "x"}')


def make_run(root: Path, draws: dict[int, dict[str, list[float]]], dense: list[float],
             seed: int = 0) -> Path:
    """A run directory: ``draws[seed][source]`` = per-problem c (problems p0, p1, ...); the draw
    with ``seed`` lives in ``root/eval``, the others in ``root/draws/seed-S/eval``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run_config.json").write_text(json.dumps({
        "model": "tiny", "method": "sparsegpt", "sparsity": "2:4", "k": 2, "n": 4, "seed": seed,
        "calib_problems": 8, "num_sequences": 4, "eval_problems": len(dense),
        "calib_seeds": sorted(draws), "sources": sorted({s for d in draws.values() for s in d}),
    }))
    ids = [f"p{i}" for i in range(len(dense))]
    _write_eval(root / "eval" / "dense.json", dict(zip(ids, dense, strict=True)))
    for s, sources in draws.items():
        base = root if s == seed else root / "draws" / f"seed-{s}"
        for name, c in sources.items():
            _write_eval(base / "eval" / f"{name}.json", dict(zip(ids, c, strict=True)))
    return root


def _row(rep: dict, label: str) -> dict:
    return next(r for c in rep["claims"] for r in c["comparisons"] if r["label"] == label)


def _claim(rep: dict, key: str) -> dict:
    return next(c for c in rep["claims"] if c["key"] == key)


N = 40
DENSE = [1.0] * 30 + [0.5] * 10  # pass@1 0.875


def test_right_where_the_other_is_wrong_is_reproduced(tmp_path):
    good, bad = [1.0] * N, [0.0] * N
    run = make_run(tmp_path / "r", {0: {"ssgr": good, "text": bad, "sgr": good, "hard": good,
                                        "easy": bad, "short": bad, "long": bad}}, DENSE)
    rep = claims.build(run, "t")
    r = _row(rep, "ssgr - text")
    assert r["abs"]["estimate"] == pytest.approx(1.0) and r["abs"]["lo"] > 0
    assert r["retained"]["estimate"] == pytest.approx(1.0 / 0.875)
    assert r["verdict"] == "reproduced" and _claim(rep, "self-generated")["verdict"] == "reproduced"
    assert _claim(rep, "difficulty")["verdict"] == "reproduced"
    assert _claim(rep, "length")["verdict"] == "reproduced"
    # the other way round is contradicted
    assert _row(rep, "ssgr - sgr")["verdict"] == "not resolved"  # identical: CI [0, 0], no figure
    run2 = make_run(tmp_path / "r2", {0: {"ssgr": bad, "text": good}}, DENSE)
    assert _row(claims.build(run2, "t"), "ssgr - text")["verdict"] == "contradicted"


def test_same_accuracy_is_not_resolved_and_the_ci_covers_zero(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.choice([0.0, 0.5, 1.0], size=N)
    b = rng.permutation(a)  # same pass@1, different problems right
    run = make_run(tmp_path / "r", {0: {"ssgr": list(a), "text": list(b)}}, DENSE)
    r = _row(claims.build(run, "t"), "ssgr - text")
    assert r["abs"]["estimate"] == pytest.approx(0.0)
    assert r["abs"]["lo"] < 0 < r["abs"]["hi"] and r["retained"]["hi"] > 0.10
    assert r["verdict"] == "not resolved"


def test_identical_sources_exclude_the_papers_figure(tmp_path):
    same = [1.0, 0.0, 0.5, 1.0] * 10
    run = make_run(tmp_path / "r", {0: {"ssgr": same, "text": same}}, DENSE)
    r = _row(claims.build(run, "t"), "ssgr - text")
    assert (r["abs"]["lo"], r["abs"]["hi"]) == (0.0, 0.0)
    assert r["verdict"] == "not reproduced"  # CI [0, 0] covers 0 and lies below +10 points


def test_missing_ablations_are_not_run(tmp_path):
    run = make_run(tmp_path / "r", {0: {"ssgr": [1.0] * N, "text": [0.0] * N}}, DENSE)
    rep = claims.build(run, "t")
    for label in ("hard - easy", "ssgr - short", "ssgr - long", "no-think - ssgr"):
        r = _row(rep, label)
        assert r["verdict"] == "not run" and "abs" not in r and r["missing"]
    assert _row(rep, "hard - easy")["missing"] == ["hard", "easy"]
    assert _claim(rep, "difficulty")["verdict"] == "not run"
    md = claims.format_markdown(rep)
    assert "not run (no hard, easy)" in md and "| not run |" in md


def test_draws_are_pooled_per_problem_and_their_spread_shown(tmp_path):
    ones, zeros = [1.0] * N, [0.0] * N
    half = [1.0] * (N // 2) + [0.0] * (N // 2)
    run = make_run(tmp_path / "r", {
        0: {"ssgr": ones, "text": zeros},
        1: {"ssgr": half, "text": zeros},
        2: {"ssgr": ones, "text": half, "hard": ones},  # hard ran only in draw 2
    }, DENSE)
    rep = claims.build(run, "t")
    r = _row(rep, "ssgr - text")
    assert r["draws"] == [0, 1, 2]
    assert [p["estimate"] for p in r["per_draw"]] == pytest.approx([1.0, 0.5, 0.5])
    assert r["abs"]["estimate"] == pytest.approx(2 / 3)
    assert r["spread"]["min"] == pytest.approx(0.5) and r["spread"]["draws"] == 3
    assert rep["sources"]["ssgr"]["per_draw"] == pytest.approx({"0": 1.0, "1": 0.5, "2": 1.0})
    assert rep["sizes"]["draws"] == [0, 1, 2]
    assert _row(rep, "hard - easy")["verdict"] == "not run"


def test_identical_calibration_sets_are_not_testable(tmp_path):
    same = [1.0, 0.0, 0.5, 1.0] * 10
    run = make_run(tmp_path / "r", {0: {"ssgr": same, "short": same, "long": [0.0] * N,
                                        "ssgr-response": same}}, DENSE)
    calib = {"ssgr": [[1, 2, 3], [4, 5]], "short": [[4, 5], [1, 2, 3]],  # same set, other order
             "long": [[1, 2, 3, 9], [4, 5]], "ssgr-response": [[1, 2, 3], [4, 5]]}
    (run / "calib").mkdir()
    for name, seqs in calib.items():
        (run / "calib" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"input_ids": ids, "num_tokens": len(ids)}) + "\n" for ids in seqs))
    rep = claims.build(run, "t")
    short = _row(rep, "ssgr - short")
    assert short["same_calibration"] and short["verdict"] == "not testable"
    assert _row(rep, "ssgr - long")["verdict"] == "reproduced"
    assert _claim(rep, "length")["verdict"] == "not testable"
    resp = _row(rep, "ssgr-response - ssgr")  # same set, pruned on other tokens: a real test
    assert not resp["same_calibration"] and resp["verdict"] == "not resolved"


def test_verdict_rules():
    paper = (0.10, 0.13)
    assert claims.verdict({"lo": 0.01, "hi": 0.3}, paper) == "reproduced"
    assert claims.verdict({"lo": -0.3, "hi": -0.01}, paper) == "contradicted"
    assert claims.verdict({"lo": -0.05, "hi": 0.08}, paper) == "not reproduced"
    assert claims.verdict({"lo": -0.05, "hi": 0.11}, paper) == "not resolved"
    assert claims.verdict(None, paper) == "not run"
    assert claims.verdict({"lo": -0.05, "hi": 0.0}, None) == "not resolved"
    assert claims.claim_verdict(["reproduced", "not resolved"]) == "not resolved"
    assert claims.claim_verdict(["reproduced", "contradicted"]) == "contradicted"
    assert claims.claim_verdict(["not reproduced", "not resolved"]) == "not reproduced"
    assert claims.claim_verdict(["not testable", "reproduced"]) == "not testable"


def test_bad_run_directories_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        claims.build(tmp_path / "nope", "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="run_config.json is missing"):
        claims.build(tmp_path / "empty", "t")
    run = make_run(tmp_path / "r", {0: {"ssgr": [1.0] * N, "text": [0.0] * N}}, DENSE)
    _write_eval(run / "eval" / "text.json", {f"q{i}": 0.0 for i in range(N)})
    with pytest.raises(InputError, match="only one of the evaluations"):
        claims.build(run, "t")
    (run / "eval" / "text.json").write_text("{not json")
    with pytest.raises(InputError, match=r"text\.json.*line 1"):
        claims.build(run, "t")


def test_main_writes_json_md_png(tmp_path):
    run = make_run(tmp_path / "r", {0: {"ssgr": [1.0] * N, "text": [0.0] * N},
                                    1: {"ssgr": [1.0] * N, "text": [0.5] * N}}, DENSE)
    out = tmp_path / "res"
    assert claims.main([str(run), "--name", "fake", "--results-dir", str(out),
                        "--command", "ssgr run --quick", "--note", "Ran on a test."]) == 0
    rep = json.loads((out / "claims-fake.json").read_text())
    assert rep["config"]["model"] == "tiny" and rep["dense"]["pass1"]["estimate"] == 0.875
    assert rep["ssgr_version"] and "commit" in rep["ssgr_checkout"]
    md = (out / "claims-fake.md").read_text()
    assert "ssgr run --quick" in md and "| self-generated reasoning calibration" in md
    assert "Ran on a test." in md
    assert "**reproduced**" in md and "+10 to +13" in md
    assert (out / "claims-fake.png").stat().st_size > 1000
    assert claims.main([str(tmp_path / "missing"), "--name", "x", "--results-dir",
                        str(out)]) == 2


@pytest.mark.slow
def test_end_to_end_on_a_small_real_run(tmp_path):
    """A real ``ssgr run`` of the tiny model with text, sgr, ssgr and easy (small sizes), then the
    table: the comparisons of those sources agree with the run's own paired differences, the
    others say "not run"."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "ssgr", "run", "--sources", "text,sgr,ssgr,easy", "--n", "8",
         "--calib-problems", "16", "--num-sequences", "4", "--eval-problems", "12", "--k", "1",
         "--max-new-tokens", "128", "--device", "cpu", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = tmp_path / "res"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "claims.py"), str(out),
                        "--name", "e2e", "--results-dir", str(res)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((res / "claims-e2e.json").read_text())
    results = json.loads((out / "results.json").read_text())
    row = _row(rep, "ssgr - text")
    assert row["abs"]["estimate"] == pytest.approx(results["rows"]["ssgr"]["diff"]["text"]
                                                   ["estimate"])
    assert row["abs"]["problems"] == 12 and row["verdict"] != "not run"
    assert _row(rep, "ssgr - sgr")["abs"]["estimate"] == pytest.approx(
        results["rows"]["ssgr"]["diff"]["sgr"]["estimate"])
    assert _row(rep, "hard - easy")["missing"] == ["hard"]
    assert _row(rep, "ssgr - short")["verdict"] == "not run"
    assert rep["sizes"]["calib"]["ssgr"]["0"]["sequences"] >= 1
    assert (res / "claims-e2e.png").is_file()


def test_equivalent_command_is_shell_safe():
    import shlex

    cmd = claims.run_command({"model": "smollm2", "problems": "builtin:arith?n=2000&levels=1",
                              "calib_seeds": [0, 1, 2]})
    args = shlex.split(cmd.replace("\\\n", " "))
    assert args[args.index("--problems") + 1] == "builtin:arith?n=2000&levels=1"
    assert args[args.index("--calib-seeds") + 1] == "0,1,2"
