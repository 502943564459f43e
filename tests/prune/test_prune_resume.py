"""Kill a prune subprocess after its first finished layer, resume, compare bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from _prune_helpers import random_calib, run_cli, state, tiny_model

from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import PruneError

_SLOW_RUN = """
import sys, time
from ssgr.prune.engine import PruneConfig, prune_model
model, calib, out = sys.argv[1:4]
prune_model(PruneConfig(model=model, calib=calib, out=out, sparsity="2:4", device="cpu"),
            on_layer_done=lambda li: time.sleep(60))
"""


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    src = tiny_model("qwen2", tmp_path / "m", num_hidden_layers=3)
    calib = random_calib(tmp_path / "c.jsonl", [64, 200, 31])
    common = [src, "--calib", calib, "--sparsity", "2:4", "--device", "cpu"]
    ref = tmp_path / "ref"
    r = run_cli(common + ["--out", ref])
    assert r.returncode == 0, r.stderr
    assert "model.layers.2.mlp.down_proj" in r.stdout  # the table

    out = tmp_path / "out"
    # the same run through the Python API, slowed by its layer-done callback so it can be killed
    # between layers (the CLI's defaults are PruneConfig's: --resume below accepts it)
    p = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(src), str(calib), str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    # resume (with another activation store: it does not change the numbers); the callback
    # sees only the layers this run prunes
    done: list[int] = []
    rep = prune_model(PruneConfig(**{**cfg, "resume": True, "offload": "disk"}),
                      on_layer_done=done.append)
    start = rep["resumed_from_layer"]
    assert start >= 1 and done == list(range(start, 3)) and len(rep["modules"]) == 21
    assert rep == json.loads((out / "prune_report.json").read_text())
    assert not (out / ".ssgr_state").exists()
    a, b = state(ref), state(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
