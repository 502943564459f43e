"""Kill a prune subprocess after its first finished layer, resume, compare bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _prune_helpers import random_calib, run_cli, state, tiny_model

from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import PruneError


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    src = tiny_model("qwen2", tmp_path / "m", num_hidden_layers=3)
    calib = random_calib(tmp_path / "c.jsonl", [64, 200, 31])
    common = [src, "--calib", calib, "--sparsity", "2:4", "--device", "cpu"]
    ref = tmp_path / "ref"
    r = run_cli(common + ["--out", ref])
    assert r.returncode == 0, r.stderr
    assert "model.layers.2.mlp.down_proj" in r.stdout  # the table

    out = tmp_path / "out"
    env = {**os.environ, "SSGR_DEBUG_LAYER_SLEEP": "60"}
    p = subprocess.Popen([sys.executable, "-m", "ssgr.prune", *map(str, common), "--out", str(out)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = out / ".ssgr_state" / "state.json"
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            if state_file.is_file() and json.loads(state_file.read_text())["ckpt_layer"] >= 1:
                break
            assert p.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("no layer finished in time")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # killed mid-way: nothing looks finished
    assert not (out / "config.json").exists() and not (out / "prune_report.json").exists()
    assert (out / "model-layer-00000.safetensors").is_file()

    # a changed command is refused, and so is the same command without --resume
    cfg = dict(model=str(src), calib=str(calib), out=str(out), sparsity="2:4", device="cpu")
    with pytest.raises(PruneError, match="different arguments"):
        prune_model(PruneConfig(**{**cfg, "sparsity": "4:8", "resume": True}))
    with pytest.raises(PruneError, match="--resume"):
        prune_model(PruneConfig(**cfg))

    # resume (with another activation store: it does not change the numbers)
    r = run_cli(common + ["--out", out, "--resume", "--offload", "disk"])
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["resumed_from_layer"] >= 1 and len(rep["modules"]) == 21
    assert not (out / ".ssgr_state").exists()
    a, b = state(ref), state(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
