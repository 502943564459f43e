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


def test_rerun_with_other_settings_is_refused_not_reused(quick_run):
    root, out, first = quick_run
    before = (out / "results.json").read_bytes()
    # the case: another method and sparsity into the same --out
    r = _ssgr("run", "--quick", "--method", "magnitude", "--sparsity", "0.5", "--out", str(out),
              cwd=root)
    assert r.returncode == 2
    assert "method 'sparsegpt' -> 'magnitude'" in r.stderr and "sparsity '2:4' -> '0.5'" in r.stderr
    assert "choose another --out, or add --overwrite" in r.stderr
    assert "magnitude" not in r.stdout
    # sibling: other problems (same ids builtin:arith-0..., other questions)
    r = _ssgr("run", "--quick", "--problems", "builtin:arith?seed=1", "--out", str(out), cwd=root)
    assert r.returncode == 2 and "problems" in r.stderr
    assert (out / "results.json").read_bytes() == before


def test_overwrite_recomputes_under_the_new_settings(quick_run, tmp_path):
    import shutil

    root, out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "mine.txt").write_text("user file")
    r = _ssgr("run", "--quick", "--method", "magnitude", "--sparsity", "0.5", "--overwrite",
              "--out", str(copy), cwd=root)
    assert r.returncode == 2 and "mine.txt" in r.stderr  # never deletes what ssgr did not write
    (copy / "mine.txt").unlink()
    r = _ssgr("run", "--quick", "--method", "magnitude", "--sparsity", "0.5", "--overwrite",
              "--out", str(copy), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "magnitude 0.5" in r.stdout.splitlines()[0]
    report = json.loads((copy / "pruned" / "ssgr" / "prune_report.json").read_text())
    assert report["method"] == "magnitude"


def test_second_run_on_one_out_is_refused(tmp_path):
    import fcntl

    from ssgr.io import lock_path

    out = tmp_path / "o"
    lock = lock_path(out)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"5151\n")
    try:
        r = _ssgr("run", "--quick", "--out", str(out), cwd=tmp_path)
    finally:
        os.close(fd)
    assert r.returncode == 2 and "pid 5151" in r.stderr


def test_plot_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    import builtins

    from ssgr.run import plot_results

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    res = {"rows": {"dense": {"accuracy": 0.5}}, "config": {"model": "tiny", "method": "m",
                                                             "sparsity": "2:4"}}
    assert plot_results(res, tmp_path / "r.png") is False
    assert not (tmp_path / "r.png").exists()
    assert "ssgr[" in caplog.text


def test_openai_generator_needs_server(tmp_path):
    from ssgr.errors import InputError
    from ssgr.run import RunConfig

    with pytest.raises(InputError, match="--server"):
        RunConfig(generator="openai", out=str(tmp_path / "o")).resolved()
    assert RunConfig(generator="openai", server="http://x", tokenizer="t").resolved().server
