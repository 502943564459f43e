"""#18 item 2 through the engine: `ssgr prune --sparsity 0` is a dense baseline for every method
and order: all 14 decoder matrices are written back unchanged and reported at sparsity 0."""

from __future__ import annotations

import pytest
import torch
from _prune_helpers import random_calib, state, tiny_model

from ssgr.prune.engine import PruneConfig, prune_model


@pytest.mark.parametrize("method,order", [("sparsegpt", "module"), ("sparsegpt", "layer"),
                                          ("wanda", "module"), ("magnitude", "layer")])
def test_sparsity_zero_leaves_every_matrix_unchanged(tmp_path, method, order):
    src = tiny_model("llama", tmp_path / "m")
    calib = random_calib(tmp_path / "c.jsonl", [40, 17])
    out = tmp_path / "out"
    rep = prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(out), method=method,
                                  sparsity="0", sequential=order, device="cpu"))
    before, after = state(src), state(out)
    pruned = [m["name"] for m in rep["modules"]]
    assert len(pruned) == 14
    for k, v in after.items():
        assert torch.equal(v, before[k]), k
    assert all(m["sparsity"] == 0.0 for m in rep["modules"])
