"""The ``--min-tokens`` policy on dense models: a module whose statistics saw fewer than N tokens,
or only zero inputs, is pruned by magnitude at the requested pattern, with one WARNING line per
module naming it and its token count, and the fallback in the report and its table."""

from __future__ import annotations

import logging

import pytest
import torch
from _prune_helpers import load, state, tiny_model

from ssgr.prune.engine import PruneConfig, format_table, prune_model
from ssgr.prune.errors import PruneError
from ssgr.prune.methods import prune_weight
from ssgr.prune.pattern import parse_pattern

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")  # v = 0 on zero inputs, so o_proj sees zeros


def _cfg(src, calib, out, **kw) -> PruneConfig:
    return PruneConfig(model=str(src), calib=str(calib), out=str(out), device="cpu", **kw)


@pytest.fixture(scope="module")
def dead_dir(tmp_path_factory):
    """A tiny Llama whose layer-1 attention input is exactly zero (its norm weight zeroed)."""
    from safetensors.torch import load_file, save_file

    src = tiny_model("llama", tmp_path_factory.mktemp("dead") / "m")
    f = src / "model.safetensors"
    sd = load_file(str(f))
    sd["model.layers.1.input_layernorm.weight"].zero_()
    save_file(sd, str(f), metadata={"format": "pt"})
    return src


@pytest.mark.parametrize("method,sparsity,order", [
    pytest.param("sparsegpt", "0.5", "module",
                 marks=pytest.mark.compat(family="llama", order="module", method="sparsegpt")),
    pytest.param("wanda", "2:4", "layer",
                 marks=pytest.mark.compat(family="llama", order="layer", method="wanda")),
])
def test_dead_inputs_fall_back_to_magnitude(tmp_path, dead_dir, calib_file, caplog, method,
                                            sparsity, order):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="ssgr.prune"):
        rep = prune_model(_cfg(dead_dir, calib_file, out, method=method, sparsity=sparsity,
                               sequential=order))
    mods = {m["name"]: m for m in rep["modules"]}
    dense, got = load(dead_dir), load(out)
    pattern = parse_pattern(sparsity)
    names = [f"model.layers.1.self_attn.{n}" for n in ATTN]
    for n in names:
        lines = [r.getMessage() for r in caplog.records if f"{n}:" in r.getMessage()]
        assert len(lines) == 1, lines  # one WARNING per module, with its token count
        assert "all 64 of its inputs were exactly zero on its 451 calibration token(s)" in \
            lines[0] and "pruned by magnitude" in lines[0]
        m = mods[n]
        assert m["method"] == "magnitude" and m["tokens"] == 451 and m["dead_inputs"] == 64
        assert "dead inputs" in m["fallback"] and m["flag"] is None
        W = dense.get_submodule(n).weight.data
        want = prune_weight(W, None, "magnitude", pattern).weight
        assert torch.equal(got.get_submodule(n).weight, want), n  # never a zeroed weight
    assert sorted(rep["totals"]["fallbacks"]) == sorted(names)
    assert all(m["method"] == method for k, m in mods.items() if k not in names)
    table = format_table(rep)
    assert "magnitude*" in table and "4 module(s) pruned by magnitude" in table


@pytest.mark.compat(family="llama", order="module", method="sparsegpt")
@pytest.mark.compat(family="llama", order="module", method="magnitude")
def test_min_tokens_above_the_calibration_size(tmp_path, llama_dir, calib_file, caplog):
    """Every module saw 451 tokens: --min-tokens 452 prunes them all by magnitude, exactly as
    --method magnitude does."""
    with caplog.at_level(logging.WARNING, logger="ssgr.prune"):
        rep = prune_model(_cfg(llama_dir, calib_file, tmp_path / "a", sparsity="2:4",
                               min_tokens=452))
    prune_model(_cfg(llama_dir, calib_file, tmp_path / "b", sparsity="2:4", method="magnitude"))
    a, b = state(tmp_path / "a"), state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(rep["totals"]["fallbacks"]) == len(rep["modules"]) == 14
    assert caplog.text.count("451 calibration token(s) reached it, fewer than --min-tokens "
                             "452") == 14
    # at the calibration size nothing falls back and the result is SparseGPT's
    rep = prune_model(_cfg(llama_dir, calib_file, tmp_path / "c", sparsity="2:4",
                           min_tokens=451))
    assert not rep["totals"]["fallbacks"]
    assert all(m["method"] == "sparsegpt" for m in rep["modules"])


@pytest.mark.compat(family="llama", order="layer", method="sparsegpt")
def test_min_tokens_zero_turns_the_policy_off(tmp_path, dead_dir, calib_file):
    rep = prune_model(_cfg(dead_dir, calib_file, tmp_path / "out", min_tokens=0,
                           sequential="layer"))
    q = {m["name"]: m for m in rep["modules"]}["model.layers.1.self_attn.q_proj"]
    assert q["sparsity"] == 1.0 and q["method"] == "sparsegpt" and "100.0%" in q["flag"]


@pytest.mark.parametrize("kw,msg", [(dict(min_tokens=-1), "--min-tokens must be an integer"),
                                    (dict(moe_calibration="some"), "--moe-calibration must be")])
def test_bad_options(tmp_path, llama_dir, calib_file, kw, msg):
    with pytest.raises(PruneError, match=msg):
        prune_model(_cfg(llama_dir, calib_file, tmp_path / "out", **kw))
