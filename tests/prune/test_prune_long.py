"""A 4096-token calibration sequence on CPU; disk offload gives the same result as device."""

from __future__ import annotations

import json

import torch
from _prune_helpers import random_calib, state

from ssgr.prune.engine import PruneConfig, prune_model


def test_long_sequence_disk_equals_device(tmp_path, llama_dir):
    calib = random_calib(tmp_path / "long.jsonl", [4096, 300, 17])
    outs = {}
    for offload, budget in (("device", "8GiB"), ("auto", "64KiB")):
        out = tmp_path / offload
        rep = prune_model(PruneConfig(model=str(llama_dir), calib=str(calib), out=str(out),
                                      sparsity="2:4", offload=offload, max_activation_memory=budget,
                                      device="cpu"))
        outs[offload] = out
        assert rep["tokens"] == 4096 + 300 + 17
        assert all(m["tokens"] == 4413 for m in rep["modules"])
    st = json.loads((outs["auto"] / "prune_report.json").read_text())["totals"]["activation_store"]
    assert st["kind"] == "disk" and st["peak_bytes"] > 4096 * 64 * 4
    a, b = state(outs["device"]), state(outs["auto"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
