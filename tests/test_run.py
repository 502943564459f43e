"""``ssgr run --quick`` end to end on the embedded tiny model: the table, results.json/png, and a
re-run that reuses every finished stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _ssgr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssgr", *args], cwd=cwd, capture_output=True, text=True,
        timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    r = _ssgr("run", "--quick", "--out", str(root / "out"), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, root / "out", r


def test_quick_run_writes_the_table_and_results(quick_run):
    _, out, r = quick_run
    for name in ("dense", "text", "gold", "sgr", "ssgr"):
        assert any(line.startswith(name) for line in r.stdout.splitlines()), r.stdout
    res = json.loads((out / "results.json").read_text())
    assert list(res["rows"]) == ["dense", "text", "gold", "sgr", "ssgr"]
    for name, row in res["rows"].items():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["mean_tokens"] > 0
        assert row["trace_ppl"] > 1.0
        assert (row["prune_seconds"] is None) == (name == "dense")
    assert (out / "results.png").stat().st_size > 1000
    ssgr_seqs = res["rows"]["ssgr"]["calib"]["sequences"]
    assert all(res["rows"][s]["calib"]["sequences"] <= ssgr_seqs for s in ("text", "gold", "sgr"))
    for src in ("text", "gold", "sgr", "ssgr"):
        report = json.loads((out / "pruned" / src / "prune_report.json").read_text())
        assert report["status"] == "complete" and report["pattern"] == "2:4"


def test_rerun_reuses_every_stage(quick_run):
    root, out, first = quick_run
    watched = [out / "traces.jsonl", *sorted(out.glob("calib/*.jsonl")),
               *sorted(out.glob("pruned/*/prune_report.json")), *sorted(out.glob("eval/*.json"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    r = _ssgr("run", "--quick", "--out", str(out), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert "already done" in r.stderr
    assert r.stdout.splitlines()[:8] == first.stdout.splitlines()[:8]


def test_unknown_source_is_a_clear_error(tmp_path):
    r = _ssgr("run", "--quick", "--sources", "ssgr,nonsense", "--out", str(tmp_path / "o"),
              cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown calibration source(s) nonsense" in r.stderr


def test_bad_options_fail_before_any_work(tmp_path):
    from ssgr.errors import InputError
    from ssgr.run import RunConfig, run

    out = tmp_path / "o"
    with pytest.raises(InputError, match="need 0 < N < M"):
        run(RunConfig(out=str(out), quick=True, sparsity="5:4"))
    with pytest.raises(InputError, match="--k must be >= 1"):
        run(out=str(out), quick=True, k=0)  # keyword options override the dataclass
    with pytest.raises(InputError, match="--sources is empty"):
        run(out=str(out), sources=[])
    assert not out.exists()
