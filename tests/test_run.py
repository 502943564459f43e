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
    # statistics: a CI per pass@1, paired differences to text and sgr, generation cost
    for name, row in res["rows"].items():
        ci = row["accuracy_ci"]
        assert ci["lo"] <= row["accuracy"] <= ci["hi"] and ci["problems"] == 40
        assert set(row["diff"]) == ({"text", "sgr"} - {name} if name != "dense" else set())
    assert res["rows"]["text"]["generation"] == {"samples": 0, "tokens": 0, "seconds": 0.0}
    g = res["rows"]["ssgr"]["generation"]
    assert g["samples"] == 8 * 32 and g["tokens"] > 0 and g["seconds"] > 0
    assert g["early_stop"]["samples"] + g["early_stop"]["samples_saved"] == g["samples"]
    assert res["rows"]["sgr"]["generation"]["samples"] == g["samples"]
    assert "early_stop" not in res["rows"]["sgr"]["generation"]
    assert "difference in pass@1, paired by problem" in r.stdout and "vs sgr" in r.stdout
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


def test_ppl_none_skips_stage_5_and_is_not_part_of_the_key(quick_run, tmp_path):
    import shutil

    root, out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "ppl")
    r = _ssgr("run", "--quick", "--ppl", "none", "--out", str(copy), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already done" in r.stderr  # reused: --ppl is not in the run key
    assert not any((copy / "ppl").iterdir())  # stage 5 computed nothing
    res = json.loads((copy / "results.json").read_text())
    assert all(row["trace_ppl"] is None for row in res["rows"].values())
    # --ppl traces afterwards computes what is missing
    r = _ssgr("run", "--quick", "--ppl", "traces", "--out", str(copy), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((copy / "results.json").read_text())
    assert all(row["trace_ppl"] > 1.0 for row in res["rows"].values())


def test_added_sources_reuse_the_finished_ones(quick_run, tmp_path):
    import shutil

    root, out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    watched = [*sorted(copy.glob("calib/*.jsonl")), *sorted(copy.glob("eval/*.json")),
               *sorted(copy.glob("pruned/*/prune_report.json"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    r = _ssgr("run", "--quick", "--sources", "text,gold,sgr,ssgr,easy", "--ppl", "none",
              "--out", str(copy), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert (copy / "eval" / "easy.json").is_file()
    assert "easy" in json.loads((copy / "results.json").read_text())["rows"]
    # without ssgr the other sets would not be capped by it: refused, naming it
    r = _ssgr("run", "--quick", "--sources", "text,gold", "--out", str(copy), cwd=root)
    assert r.returncode != 0 and "calib_capped_by_ssgr True -> False" in r.stderr


def test_calibration_draws_kept_apart_and_summarised(quick_run, tmp_path):
    import shutil

    root, out, first = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    watched = [copy / "traces.jsonl", *sorted(copy.glob("calib/*.jsonl")),
               *sorted(copy.glob("pruned/*/prune_report.json")), *sorted(copy.glob("eval/*.json"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    # calib_seeds is not part of the run key: seed 0 (= --seed) is the finished draw, reused
    r = _ssgr("run", "--quick", "--calib-seeds", "0,1", "--out", str(copy), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    draw = copy / "draws" / "seed-1"
    for src in ("text", "gold", "sgr", "ssgr"):
        assert (draw / "calib" / f"{src}.jsonl").is_file()
        assert (draw / "pruned" / src / "prune_report.json").is_file()
        assert (draw / "eval" / f"{src}.json").is_file()
        assert (draw / "ppl" / f"{src}.json").is_file()
    assert not (draw / "eval" / "dense.json").exists()  # dense is evaluated once
    # the draws differ in their random picks: sgr's samples, text's windows
    sgr = (draw / "calib" / "sgr.jsonl").read_bytes()
    assert sgr != (copy / "calib" / "sgr.jsonl").read_bytes()
    res = json.loads((copy / "results.json").read_text())
    assert [d["seed"] for d in res["draws"]] == [0, 1]
    first_rows = json.loads((out / "results.json").read_text())["rows"]
    assert res["draws"][0]["rows"]["ssgr"]["accuracy"] == first_rows["ssgr"]["accuracy"]
    for src in ("text", "gold", "sgr", "ssgr"):
        accs = [d["rows"][src]["accuracy"] for d in res["draws"]]
        a = res["across_draws"][src]["accuracy"]
        assert a["min"] == min(accs) and a["max"] == max(accs) and a["draws"] == 2
        assert a["mean"] == pytest.approx(sum(accs) / 2)
    assert "across 2 calibration draws (seeds 0, 1)" in r.stdout
    assert r.stdout.splitlines()[3] == first.stdout.splitlines()[3]  # dense row unchanged


def test_ssgr_response_prunes_on_the_response_tokens(quick_run, tmp_path):
    from ssgr.models import resolve_model
    from ssgr.run import RunConfig, _prune

    _, out, _ = quick_run
    cfg = RunConfig(quick=True, out=str(tmp_path / "o")).resolved()
    calib = out / "calib" / "ssgr.jsonl"
    rep = _prune(cfg, resolve_model("tiny"), calib, tmp_path / "resp", "response")
    rows = [json.loads(x) for x in calib.read_text().splitlines()]
    prompt = sum(r["prompt_tokens"] for r in rows)
    assert prompt > 0 and rep["tokens"] == sum(len(r["input_ids"]) for r in rows)
    assert rep["statistics_tokens"] == rep["tokens"] - prompt
    full = json.loads((out / "pruned" / "ssgr" / "prune_report.json").read_text())
    assert full["statistics_tokens"] == full["tokens"] == rep["tokens"]


def test_calib_seeds_options_and_key(tmp_path):
    from ssgr.errors import InputError
    from ssgr.models import resolve_model
    from ssgr.run import ABLATIONS, RunConfig, draw_dir, run_key

    cfg = RunConfig(out=str(tmp_path / "o"), calib_seeds=[2, 1, 2]).resolved()
    assert cfg.calib_seeds == [2, 1]
    with pytest.raises(InputError, match="--calib-seeds is empty"):
        RunConfig(calib_seeds=[]).resolved()
    plain = RunConfig(out=str(tmp_path / "o")).resolved()
    m = resolve_model("tiny")
    assert run_key(cfg, m) == run_key(plain, m)  # draws live apart: the key does not change
    assert draw_dir(tmp_path, 0, 0) == tmp_path
    assert draw_dir(tmp_path, 3, 0) == tmp_path / "draws" / "seed-3"
    assert "ssgr-response" in ABLATIONS
    assert "ssgr-response" in RunConfig(ablations=True).resolved().sources


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
    # the issue's case: another method and sparsity into the same --out
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
