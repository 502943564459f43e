"""The benchmark suite still runs: every op benchmark at tiny shapes (``SSGR_BENCH_SMOKE=1``, one
round, results checked against the peers as in a real run), then ``report.py`` turns the JSON into
the markdown table and the PNG. The end-to-end benchmark (minutes) is left to ``make bench``.
Nothing here is a measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_op_benchmarks_run_and_report(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "SSGR_BENCH_SMOKE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH), "-q", "-p", "no:cacheprovider",
         "-c", str(BENCH / "pytest.ini"), "--benchmark-only", f"--benchmark-json={out}",
         "-k", "not e2e"],
        cwd=BENCH, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    ops = {b["extra_info"]["op"] for b in data["benchmarks"]}
    assert {"hessian", "sparsegpt", "sparsegpt-paired", "nm_mask", "topk_mask",
            "wanda_scores"} <= ops
    paired = [b for b in data["benchmarks"] if b["extra_info"]["op"] == "sparsegpt-paired"]
    for b in paired:  # one peer round per timed round, each ratio from its own pair
        x = b["extra_info"]
        assert len(x["peer_seconds"]) == len(x["ratios"]) == len(b["stats"]["data"])
        assert x["ratios"][0] == x["peer_seconds"][0] / b["stats"]["data"][0]
    assert data["machine_info"]["ssgr"]["smoke"] is True

    sys.path.insert(0, str(BENCH))
    try:
        from report import plot, table
    finally:
        sys.path.remove(str(BENCH))
    md = table(str(out))
    assert "Smoke run" in md and "### sparsegpt" in md and "x vs llm-compressor" in md
    assert "### sparsegpt-paired" in md and "per-round x" in md
    png = tmp_path / "smoke.png"
    plot(str(out), str(png))
    assert png.stat().st_size > 1000


def test_budget_rounds(monkeypatch):
    """Rounds that span about 15 s, clamped to 5..30; SSGR_BENCH_ROUNDS overrides; 1 in smoke."""
    sys.path.insert(0, str(BENCH))
    try:
        import shapes
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(shapes, "SMOKE", False)
    monkeypatch.delenv("SSGR_BENCH_ROUNDS", raising=False)
    assert shapes.budget_rounds(1.0) == 15
    assert shapes.budget_rounds(0.9) == 17
    assert shapes.budget_rounds(6.0) == 5  # a slow call still gets the minimum
    assert shapes.budget_rounds(0.001) == 30
    monkeypatch.setenv("SSGR_BENCH_ROUNDS", "2")
    assert shapes.budget_rounds(1.0) == 2
    monkeypatch.setattr(shapes, "SMOKE", True)
    assert shapes.budget_rounds(1.0) == 1
