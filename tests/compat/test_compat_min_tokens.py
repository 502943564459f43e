"""The ``--min-tokens`` policy in the llm-compressor drop-ins: a layer whose inputs are all zero,
or that no token reached, is pruned by magnitude at the requested pattern, warned and recorded
(stock llm-compressor zeroes the whole weight / leaves it dense)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

pytest.importorskip("llmcompressor")

from _compat_util import calibration_set, tiny_llama, tokenizer  # noqa: E402
from llmcompressor.modifiers.pruning import SparseGPTModifier  # noqa: E402

from ssgr.compat.llmcompressor import (  # noqa: E402
    SSGRSparseGPTModifier,
    SSGRWandaPruningModifier,
)
from ssgr.ops import nm_mask, topk_mask  # noqa: E402

pytestmark = pytest.mark.peer

DEAD = ("q_proj", "k_proj", "v_proj", "o_proj")  # v = 0, so o_proj sees zeros too


def _magnitude(W: torch.Tensor, mask_structure: str | None) -> torch.Tensor:
    """Magnitude pruning written out here: per row 50% unstructured, or 2 kept of every 4."""
    s = W.abs().float()
    keep = nm_mask(s, 2, 4) if mask_structure else topk_mask(s, 0.5, per="row")
    return W * keep


def _oneshot(model, recipe):
    from llmcompressor import oneshot

    m = copy.deepcopy(model)
    ds = calibration_set()
    oneshot(model=m, dataset=ds, recipe=recipe, tokenizer=tokenizer(),
            num_calibration_samples=len(ds), max_seq_length=len(ds[0]["input_ids"]),
            pipeline="sequential", shuffle_calibration_samples=False)
    return m


@pytest.fixture(scope="module")
def dead_model(tmp_path_factory):
    model = tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
    with torch.no_grad():  # layer 1's attention input is exactly zero on every token
        model.model.layers[1].input_layernorm.weight.zero_()
    return model


@pytest.mark.parametrize("cls,mask_structure", [(SSGRSparseGPTModifier, None),
                                                (SSGRSparseGPTModifier, "2:4"),
                                                (SSGRWandaPruningModifier, None)])
def test_dead_inputs_fall_back_to_magnitude(dead_model, caplog, cls, mask_structure):
    kw = dict(sparsity=0.5, targets=["Linear"], ignore=["re:.*lm_head"])
    if mask_structure:
        kw["mask_structure"] = mask_structure
    recipe = cls(**kw)
    with caplog.at_level(logging.WARNING, logger="ssgr.compat.llmcompressor"):
        m = _oneshot(dead_model, recipe)
    for n in DEAD:
        name = f"model.layers.1.self_attn.{n}"
        got = m.get_submodule(name).weight
        want = _magnitude(dead_model.get_submodule(name).weight, mask_structure)
        assert torch.equal(got, want), name
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1 and "all 64 of its inputs were exactly zero" in lines[0]
        assert "pruned by magnitude" in lines[0]
    # calibrated layers are pruned by the method, not by the fallback
    assert sum("pruned by magnitude" in r.getMessage() for r in caplog.records) == len(DEAD)
    fallbacks = getattr(recipe, "ssgr_fallbacks", None)
    if fallbacks:  # oneshot kept this instance: the records are on it
        assert sorted(f["module"] for f in fallbacks) == sorted(
            f"model.layers.1.self_attn.{n}" for n in DEAD)
        assert all(f["method"] == "magnitude" and f["tokens"] == 6 * 24 for f in fallbacks)


def test_stock_sparsegpt_zeroes_the_dead_weight(dead_model):
    """What the policy replaces: stock llm-compressor zeroes the whole weight."""
    m = _oneshot(dead_model, SparseGPTModifier(sparsity=0.5, targets=["Linear"],
                                               ignore=["re:.*lm_head"]))
    assert not bool(m.model.layers[1].self_attn.q_proj.weight.any())


@pytest.mark.parametrize("cls", [SSGRSparseGPTModifier, SSGRWandaPruningModifier])
def test_layer_no_token_reached_falls_back(cls, caplog):
    """A registered layer whose hook never ran (an MoE expert the router never chose)."""
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    W0 = unused.weight.detach().clone()
    mod = cls(sparsity=0.5, mask_structure="2:4", targets=["Linear"])
    for lin, name in ((used, "experts.0.up_proj"), (unused, "experts.1.up_proj")):
        mod._module_names[lin] = name
        mod._module_sparsities[lin] = 0.5
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ssgr.compat.llmcompressor"):
        mod.calibrate_module(used, (torch.randn(5, 16),), None)
        mod.compress_modules()
        mod.on_calibration_end(None, None)
    assert torch.equal(unused.weight, _magnitude(W0, "2:4"))
    assert mod.ssgr_fallbacks == [{"module": "experts.1.up_proj", "tokens": 0,
                                   "method": "magnitude",
                                   "reason": "0 calibration token(s) reached it, fewer than 1"}]
    lines = [r.getMessage() for r in caplog.records if "pruned by magnitude" in r.getMessage()]
    assert len(lines) == 1 and "experts.1.up_proj" in lines[0] and "0 calibration" in lines[0]
