"""The streaming engine against naive in-memory references, per model family."""

from __future__ import annotations

import json

import pytest
import torch
from _prune_helpers import STAGES, load, naive_prune, random_calib, read_calib, state, tiny_model

from ssgr.ops import HessianAccumulator
from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.layers import plan_layer, select_targets
from ssgr.prune.oneshot import prune_oneshot
from ssgr.prune.pattern import parse_pattern


def _compare(ref_model, out_dir, atol=2e-5):
    got = state(out_dir)
    ref = {k: v for k, v in ref_model.state_dict().items() if k in got}
    assert set(got) <= set(ref_model.state_dict()), set(got) - set(ref_model.state_dict())
    for k, v in got.items():
        torch.testing.assert_close(v, ref[k], atol=atol, rtol=1e-4, msg=k)
    assert any("layers.0.self_attn.q_proj" in k for k in got)


def _compat(family: str, order: str, method: str = "sparsegpt"):
    return pytest.mark.compat(family=family, order=order, method=method)


@pytest.mark.parametrize("family,sparsity", [
    pytest.param(f, sp, marks=_compat(f, "layer"))
    for f, sp in [("llama", "2:4"), ("qwen2", "0.5"), ("qwen3", "4:8"), ("mistral", "2:4")]])
def test_layer_order_equals_naive_reference(tmp_path, family, sparsity):
    src = tiny_model(family, tmp_path / "m")
    calib = random_calib(tmp_path / "c.jsonl", [48, 130, 9, 64])
    out = tmp_path / "out"
    rep = prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(out),
                                  sparsity=sparsity, sequential="layer", device="cpu"))
    ref = naive_prune(src, read_calib(calib), parse_pattern(sparsity), order="layer")
    _compare(ref, out)
    assert rep["status"] == "complete" and len(rep["modules"]) == 14
    assert all(m["tokens"] == 48 + 130 + 9 + 64 for m in rep["modules"])
    # the output directory is a normal model: from_pretrained loads it and it runs
    m = load(out)
    ids = read_calib(calib)[0]
    torch.testing.assert_close(m(input_ids=ids).logits, ref(input_ids=ids).logits,
                               atol=1e-4, rtol=1e-4)


@_compat("qwen3", "module")
def test_module_order_equals_naive_stagewise_reference(tmp_path):
    src = tiny_model("qwen3", tmp_path / "m", max_shard_size="40KB")
    assert (src / "model.safetensors.index.json").is_file()  # sharded checkpoint
    calib = random_calib(tmp_path / "c.jsonl", [33, 100, 70])
    out = tmp_path / "out"
    prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(out), sparsity="2:4",
                            sequential="module", device="cpu"))
    ref = naive_prune(src, read_calib(calib), parse_pattern("2:4"), order="module")
    _compare(ref, out)
    ref_layer = naive_prune(src, read_calib(calib), parse_pattern("2:4"), order="layer")
    diff = max((ref_layer.state_dict()[k] - v).abs().max().item() for k, v in state(out).items()
               if "o_proj" in k or "down_proj" in k)
    assert diff > 1e-3  # module order really differs from layer order


@_compat("llama", "layer")
def test_layer_order_dense_propagation_equals_oneshot(tmp_path, llama_dir, calib_file):
    out = tmp_path / "out"
    prune_model(PruneConfig(model=str(llama_dir), calib=str(calib_file), out=str(out),
                            sparsity="0.5", sequential="layer", propagate="dense",
                            method="sparsegpt", device="cpu"))
    ref = load(llama_dir)
    prune_oneshot(ref, read_calib(calib_file), parse_pattern("0.5"))
    _compare(ref, out)


@pytest.mark.parametrize("method", [pytest.param(m, marks=_compat("llama", "layer", m))
                                    for m in ("wanda", "magnitude")])
def test_wanda_magnitude_equal_reference(tmp_path, llama_dir, calib_file, method):
    out = tmp_path / "out"
    prune_model(PruneConfig(model=str(llama_dir), calib=str(calib_file), out=str(out),
                            sparsity="0.5", method=method, sequential="layer", scope="layer",
                            device="cpu"))
    ref = naive_prune(llama_dir, read_calib(calib_file), parse_pattern("0.5"), method=method,
                      scope="layer")
    _compare(ref, out)


@pytest.mark.parametrize("family,method", [
    pytest.param(f, m, marks=_compat(f, "module", m))
    for f, m in [("llama", "sparsegpt"), ("qwen2", "sparsegpt"), ("mistral", "sparsegpt"),
                 ("llama", "wanda"), ("llama", "magnitude")]])
def test_module_order_families_equal_naive_reference(tmp_path, family, method):
    """Module order of the other dense families (and Wanda / magnitude, whose statistics are
    then taken after the earlier groups are pruned) equals the stage-wise reference."""
    src = tiny_model(family, tmp_path / "m", hidden_size=32, intermediate_size=64)
    calib = random_calib(tmp_path / "c.jsonl", [40, 9])
    out = tmp_path / "out"
    prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(out), sparsity="2:4",
                            method=method, sequential="module", device="cpu"))
    ref = naive_prune(src, read_calib(calib), parse_pattern("2:4"), order="module",
                      method=method, family=family)
    _compare(ref, out)


@torch.no_grad()
def test_shared_hessians_equal_per_module_ones(llama_dir, calib_file):
    model = load(llama_dir)
    layer = model.model.layers[0]
    targets = select_targets(layer, "model.layers.0", None, None)
    x = torch.randn(1, 12, 64)
    pe = model.model.rotary_emb(x, torch.arange(12)[None])
    plan = plan_layer(layer, targets, x, {"position_embeddings": pe})
    assert plan.groups == [list(s) for s in STAGES]
    # one accumulator per group sees exactly what a per-module accumulator sees
    mods = dict(layer.named_modules())
    shared = {g[0]: HessianAccumulator(mods[g[0]].in_features) for g in plan.groups}
    single = {n: HessianAccumulator(mods[n].in_features) for n in targets}
    hs = [mods[n].register_forward_pre_hook(lambda _m, a, acc=acc: acc.add(a[0]))
          for n, acc in list(shared.items()) + list(single.items())]
    for ids in read_calib(calib_file):
        model(input_ids=ids)
    for h in hs:
        h.remove()
    for g in plan.groups:
        for n in g:
            assert torch.equal(shared[g[0]].hessian(), single[n].hessian()), n


def test_targets_and_ignore(tmp_path, llama_dir, calib_file):
    out = tmp_path / "out"
    rep = prune_model(PruneConfig(model=str(llama_dir), calib=str(calib_file), out=str(out),
                                  sparsity="2:4", targets=["re:mlp\\."], ignore=["up_proj"],
                                  device="cpu"))
    names = [m["name"] for m in rep["modules"]]
    assert names == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj",
                     "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.down_proj"]
    src, got = state(llama_dir), state(out)
    assert torch.equal(src["model.layers.1.self_attn.q_proj.weight"],
                       got["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(src["model.embed_tokens.weight"], got["model.embed_tokens.weight"])
    assert not torch.equal(src["model.layers.0.mlp.gate_proj.weight"],
                           got["model.layers.0.mlp.gate_proj.weight"])
    report = json.loads((out / "prune_report.json").read_text())
    assert report["totals"]["activation_store"]["kind"] == "device"
    assert set(report["totals"]["breakdown_s"]) >= {"forward", "hessian", "obs", "io"}
    assert not (out / ".ssgr_state").exists()
