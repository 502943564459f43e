"""The engine's parts: one source for the options, the stage timer, the layer-done callback and
the command line's error handling."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import pytest
import torch
from _prune_helpers import run_cli

from ssgr.options import from_args
from ssgr.prune import cli
from ssgr.prune.config import PruneConfig
from ssgr.prune.engine import prune_model
from ssgr.prune.report import BREAKDOWN, Timer


def test_parser_defaults_are_the_dataclass_defaults():
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["M", "--calib", "c.jsonl", "--out", "D"])
    cfg = from_args(PruneConfig, args)
    assert cfg == PruneConfig(model="M", calib="c.jsonl", out="D")
    flags = {a.dest for a in p._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(PruneConfig)}
    args = p.parse_args(["M", "--calib", "c", "--out", "D", "--checkpoint-every", "3",
                         "--max-sequences", "2", "--percdamp", "0.1", "--resume"])
    cfg = from_args(PruneConfig, args)
    assert (cfg.checkpoint_every, cfg.max_sequences, cfg.percdamp, cfg.resume) == (3, 2, 0.1, True)
    with pytest.raises(SystemExit):
        p.parse_args(["M", "--calib", "c", "--out", "D", "--method", "obs"])


def test_timer_stages_do_not_overlap():
    t = Timer(torch.device("cpu"))
    with t.stage("forward"):
        time.sleep(0.02)
        for _ in range(3):
            with t.stage("hessian"):
                time.sleep(0.01)
    with t.stage("obs"):
        time.sleep(0.01)
    s = t.seconds
    assert tuple(s) == BREAKDOWN
    assert 0.03 <= s["hessian"] < 0.2 and 0.02 <= s["forward"] < 0.2 and s["obs"] >= 0.01
    with pytest.raises(KeyError), t.stage("obs"):
        raise KeyError("x")  # an exception still closes the stage
    with t.stage("io"):
        pass
    assert t._nested == []


@pytest.mark.parametrize("order,method", [("module", "sparsegpt"), ("layer", "wanda")])
def test_breakdown_adds_up_and_callback_per_layer(tmp_path, llama_dir, calib_file, order,
                                                  method):
    done: list[int] = []
    t0 = time.perf_counter()
    rep = prune_model(PruneConfig(model=str(llama_dir), calib=str(calib_file),
                                  out=str(tmp_path / "o"), device="cpu", sequential=order,
                                  method=method), on_layer_done=done.append)
    outside = time.perf_counter() - t0
    assert done == list(range(rep["layers"]))
    tot = rep["totals"]
    br = tot["breakdown_s"]
    assert tuple(br) == BREAKDOWN and all(v >= 0 for v in br.values())
    assert br["forward"] > 0 and br["hessian"] > 0 and br["obs"] > 0 and br["io"] > 0
    assert sum(br.values()) <= tot["wall_s"] + 1e-3
    assert tot["wall_s"] <= outside
    assert json.loads((tmp_path / "o" / "prune_report.json").read_text())["totals"] == tot


def test_callback_error_stops_the_run_resumably(tmp_path, llama_dir, calib_file):
    cfg = PruneConfig(model=str(llama_dir), calib=str(calib_file), out=str(tmp_path / "o"),
                      device="cpu", sparsity="2:4")

    def stop(li):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_model(cfg, on_layer_done=stop)
    assert not (tmp_path / "o" / "prune_report.json").exists()
    done: list[int] = []
    rep = prune_model(dataclasses.replace(cfg, resume=True), on_layer_done=done.append)
    assert rep["resumed_from_layer"] == 1 and done == [1]


def test_cli_errors(tmp_path, llama_dir, calib_file):
    r = run_cli([llama_dir, "--calib", tmp_path / "nope.jsonl", "--out", tmp_path / "o",
                 "--device", "cpu"])
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "nope.jsonl does not exist" in errors[0]
    assert "Traceback" not in r.stderr
    r = run_cli(["-v", llama_dir, "--calib", tmp_path / "nope.jsonl", "--out", tmp_path / "o",
                 "--device", "cpu"])
    assert r.returncode == 2 and "Traceback" in r.stderr and "MissingFileError" in r.stderr
    # issue #19 item 5: --out under a file is checked before any work, one ERROR line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli([llama_dir, "--calib", calib_file, "--out", blocker / "sub", "--device", "cpu"])
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(errors) == 1 and f"cannot write {blocker / 'sub'}: {blocker} is a file" in errors[0]
