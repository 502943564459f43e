"""Every pruned module of the written model obeys the requested pattern exactly."""

from __future__ import annotations

import pytest
from _prune_helpers import check_pattern, state

from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.pattern import parse_pattern

CASES = [
    ("sparsegpt", "2:4", "row", "module"),
    ("sparsegpt", "4:8", "row", "layer"),
    ("sparsegpt", "0.5", "row", "module"),
    ("wanda", "0.5", "row", "module"),
    ("wanda", "2:4", "row", "layer"),
    ("magnitude", "0.6", "layer", "module"),
]


@pytest.mark.parametrize("method,sparsity,scope,order", CASES)
def test_pattern_obeyed(tmp_path, llama_dir, calib_file, method, sparsity, scope, order):
    out = tmp_path / "out"
    rep = prune_model(PruneConfig(model=str(llama_dir), calib=str(calib_file), out=str(out),
                                  method=method, sparsity=sparsity, scope=scope, sequential=order,
                                  blocksize=32, device="cpu"))
    pattern = parse_pattern(sparsity)
    got = state(out)
    names = [m["name"] for m in rep["modules"]]
    assert len(names) == 14
    for rec in rep["modules"]:
        W = got[rec["name"] + ".weight"]
        check_pattern(W, pattern, scope=scope,
                      blocksize=32 if method == "sparsegpt" and not pattern.is_nm else None)
        tol = 1e-9 if pattern.is_nm else 0.01
        assert rec["sparsity"] == pytest.approx(pattern.fraction, abs=tol)
        assert rec["sparsity"] == pytest.approx(float((W == 0).float().mean()), abs=1e-6)
        assert (rec["loss"] is not None) == (method == "sparsegpt")
        assert rec["backend"] in ("cpu", "reference")
    # nothing outside the decoder layers' Linears changed
    src = state(llama_dir)
    for k in ("model.embed_tokens.weight", "model.norm.weight",
              "model.layers.0.input_layernorm.weight"):
        assert (got[k] == src[k]).all()
