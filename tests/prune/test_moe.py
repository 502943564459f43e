"""Mixture-of-Experts models (Qwen3-MoE, Qwen2-MoE with a shared expert, Mixtral) through
``ssgr prune``: checkpoints stored per expert or fused load, each expert's projections are pruned
as their own matrices with Hessians from the tokens routed to them, and the result equals a naive
reference (the whole model run with a hand-written per-expert hook, experts sliced, pruned with the
same op). Tiny random-init models saved by transformers 5 (no hub)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from _prune_helpers import load, random_calib, read_calib, state
from torch import nn
from torch.nn import functional as F

from ssgr.ops import HessianAccumulator
from ssgr.prune.engine import PruneConfig, format_table, prune_model
from ssgr.prune.errors import PruneError
from ssgr.prune.methods import prune_weight
from ssgr.prune.pattern import Pattern, parse_pattern

BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, max_position_embeddings=4096, num_experts_per_tok=2)
CONFIGS = {
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(intermediate_size=64, moe_intermediate_size=32, num_experts=8, head_dim=16,
                       norm_topk_prob=True)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                       shared_expert_intermediate_size=64)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(intermediate_size=32, num_local_experts=4)),
}
LENGTHS = [40, 9, 33]
_MODELS: dict[tuple, Path] = {}


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    """``moe_dir(family, layout, starve)``: :func:`tiny_moe`, saved once per module."""
    def get(family: str, layout: str = "per_expert", starve: int | None = None) -> Path:
        key = (family, layout, starve)
        if key not in _MODELS or not _MODELS[key].is_dir():
            _MODELS[key] = tiny_moe(family, tmp_path_factory.mktemp(family) / "m", layout,
                                    starve)
        return _MODELS[key]
    return get


def tiny_moe(family: str, folder: Path, layout: str = "per_expert", starve: int | None = None,
             seed: int = 0) -> Path:
    """A seeded random-init tiny MoE causal LM saved to ``folder``: ``per_expert`` is what
    ``save_pretrained`` writes (``mlp.experts.0.gate_proj.weight``, Mixtral's
    ``block_sparse_moe.experts.0.w1.weight``), ``fused`` the in-memory 3-D parameters
    (``mlp.experts.gate_up_proj``). ``starve``: the router of layer 0 never picks that expert
    (its row is 0; the others come in +-v pairs, so two logits are always > 0)."""
    import transformers as tf
    from safetensors.torch import save_file

    cfg_cls, model_cls, extra = CONFIGS[family]
    torch.manual_seed(seed)
    model = getattr(tf, model_cls)(getattr(tf, cfg_cls)(**BASE, **extra)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2 and "layers" in n:
                p.normal_(0, 0.2)
        if starve is not None:
            gate = model.model.layers[0].mlp.gate.weight
            E = gate.shape[0]
            rows = [r for r in range(E) if r != starve]
            for a, b in zip(rows[0::2], rows[1::2], strict=False):
                gate[b] = -gate[a]
            gate[starve] = 0
    model.save_pretrained(folder, safe_serialization=True)
    if layout == "fused":
        for f in folder.glob("*.safetensors"):
            f.unlink()
        (folder / "model.safetensors.index.json").unlink(missing_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


class _Done(Exception):
    pass


def _stop(*_a):
    raise _Done


def _is_router(name: str) -> bool:
    return name.endswith("shared_expert_gate")


@torch.no_grad()
def naive_moe(folder: Path, seqs: list[torch.Tensor], pattern: Pattern, order: str,
              method: str, calibration: str = "routed") -> nn.Module:
    """The reference: per layer and stage, the whole model re-run on every sequence; Linear
    inputs by forward pre-hooks, expert inputs by a pre-hook on the experts module that loops
    over experts as transformers' eager loop does (one_hot + where); each expert's gate / up /
    down slice pruned with ``prune_weight``; an expert no token reached by magnitude."""
    model = load(folder)
    hessian = method == "sparsegpt"
    for layer in model.model.layers:
        lin = {n: m for n, m in layer.named_modules()
               if isinstance(m, nn.Linear) and not _is_router(n)}
        experts = layer.mlp.experts
        E = experts.gate_up_proj.shape[0]
        stages = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  ["self_attn.o_proj"]]
        if "mlp.shared_expert.gate_proj" in lin:
            stages += [["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"],
                       ["mlp.shared_expert.down_proj"]]
        stages += [["experts.gate_up"], ["experts.down"]]
        if order == "layer":
            stages = [[n for s in stages for n in s]]
        for stage in stages:
            accs = {n: HessianAccumulator(lin[n].in_features, hessian=hessian)
                    for n in stage if n in lin}
            ex = {k: [HessianAccumulator(experts.gate_up_proj.shape[2] if k == "experts.gate_up"
                                         else experts.down_proj.shape[2], hessian=hessian)
                      for _ in range(E)] for k in stage if k.startswith("experts.")}
            hs = [lin[n].register_forward_pre_hook(lambda _m, a, acc=accs[n]: acc.add(a[0]))
                  for n in accs]

            def on_experts(m, args, ex=ex, E=E):
                x, idx = args[0], args[1]
                mask = F.one_hot(idx, num_classes=E).permute(2, 1, 0)
                for e in range(E):
                    _, tok = torch.where(mask[e])
                    xe = x if calibration == "all" else x[tok]
                    if not xe.shape[0]:
                        continue
                    if "experts.gate_up" in ex:
                        ex["experts.gate_up"][e].add(xe)
                    if "experts.down" in ex:
                        g, u = (xe @ m.gate_up_proj[e].T).chunk(2, dim=-1)
                        ex["experts.down"][e].add(m.act_fn(g) * u)
            hs.append(experts.register_forward_pre_hook(on_experts))
            hs.append(layer.register_forward_hook(_stop))  # later layers are not needed
            for ids in seqs:
                try:
                    model(input_ids=ids)
                except _Done:
                    pass
            for h in hs:
                h.remove()
            for n, acc in accs.items():
                W = lin[n].weight.data
                W.copy_(prune_weight(W, acc, method, pattern).weight)
            for k, per_expert in ex.items():
                P = experts.gate_up_proj.data if k == "experts.gate_up" else experts.down_proj.data
                for e, acc in enumerate(per_expert):
                    half = P.shape[1] // 2
                    parts = [P[e, :half], P[e, half:]] if k == "experts.gate_up" else [P[e]]
                    for W in parts:
                        if acc.tokens == 0:
                            W.copy_(prune_weight(W, None, "magnitude", pattern).weight)
                        else:
                            W.copy_(prune_weight(W, acc, method, pattern).weight)
    return model


def _compare(ref: nn.Module, out: Path, atol: float = 2e-5) -> None:
    got = load(out).state_dict()
    want = ref.state_dict()
    assert got.keys() == want.keys()
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], atol=atol, rtol=1e-4, msg=k)


def _cfg(src, calib, out, **kw) -> PruneConfig:
    return PruneConfig(model=str(src), calib=str(calib), out=str(out), device="cpu", **kw)


CASES = [  # family, checkpoint layout, order, method, sparsity
    ("qwen3_moe", "per_expert", "module", "sparsegpt", "2:4"),
    ("qwen3_moe", "fused", "layer", "wanda", "0.5"),
    ("qwen2_moe", "per_expert", "module", "wanda", "2:4"),
    ("qwen2_moe", "fused", "layer", "sparsegpt", "0.5"),
    ("mixtral", "per_expert", "layer", "sparsegpt", "2:4"),
    ("mixtral", "fused", "module", "wanda", "0.5"),
]


@pytest.mark.parametrize("family,layout,order,method,sparsity", [
    pytest.param(*c, marks=pytest.mark.compat(family=c[0], order=c[2], method=c[3]),
                 id="-".join(c)) for c in CASES])
def test_moe_equals_naive_reference(tmp_path, moe_dir, family, layout, order, method, sparsity):
    src = moe_dir(family, layout)
    calib = random_calib(tmp_path / "c.jsonl", LENGTHS)
    out = tmp_path / "out"
    rep = prune_model(_cfg(src, calib, out, method=method, sparsity=sparsity, sequential=order))
    pattern = parse_pattern(sparsity)
    ref = naive_moe(src, read_calib(calib), pattern, order, method)
    _compare(ref, out)
    mods = {m["name"]: m for m in rep["modules"]}
    E = CONFIGS[family][2].get("num_experts") or CONFIGS[family][2]["num_local_experts"]
    shared = family == "qwen2_moe"
    assert len(mods) == 2 * (4 + 3 * E + (3 if shared else 0))
    # one record per expert matrix; token counts: each token goes to top-k = 2 experts
    for li in range(2):
        gu = [mods[f"model.layers.{li}.mlp.experts.{e}.gate_proj"]["tokens"] for e in range(E)]
        assert sum(gu) == 2 * sum(LENGTHS)
        for e in range(E):
            m = mods[f"model.layers.{li}.mlp.experts.{e}.down_proj"]
            assert m["tokens"] == gu[e] and m["group"] == f"mlp.experts.{e}.down_proj"
            assert mods[f"model.layers.{li}.mlp.experts.{e}.up_proj"]["group"] == \
                f"mlp.experts.{e}.gate_proj+up_proj"
    assert all(m["method"] == method and m["fallback"] is None for m in mods.values())
    assert not rep["totals"]["fallbacks"]
    # the router and the shared expert's gate are never pruned by default
    srcw, outw = state(src), state(out)
    # a fused Mixtral checkpoint names the block as in memory (mlp), the saved layout as on disk
    # (block_sparse_moe)
    src_by = {k.replace("block_sparse_moe", "mlp"): v for k, v in srcw.items()}
    routers = [k for k in outw if k.endswith((".gate.weight", "shared_expert_gate.weight"))]
    assert len(routers) == (4 if shared else 2)
    for k in routers:
        assert torch.equal(outw[k], src_by[k.replace("block_sparse_moe", "mlp")].float()), k
    # written in the layout save_pretrained writes (per expert), whatever the source layout
    expert_key = ("model.layers.0.block_sparse_moe.experts.3.w2.weight" if family == "mixtral"
                  else "model.layers.0.mlp.experts.3.down_proj.weight")
    assert expert_key in outw and not any(k.endswith("gate_up_proj") for k in outw)
    if family == "qwen3_moe":  # from_pretrained reloads it (above) and it generates
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(out).eval()
        ids = m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
        assert ids.shape == (1, 7)


@pytest.mark.compat(family="qwen3_moe", order="module", method="sparsegpt")
def test_expert_no_token_reaches_falls_back_to_magnitude(tmp_path, moe_dir, caplog):
    src = moe_dir("qwen3_moe", starve=3)
    calib = random_calib(tmp_path / "c.jsonl", LENGTHS)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="ssgr.prune"):
        rep = prune_model(_cfg(src, calib, out, sparsity="0.5"))
    names = [f"model.layers.0.mlp.experts.3.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    for n in names:  # one WARNING line per module, naming it and its token count
        lines = [r.getMessage() for r in caplog.records if n in r.getMessage()]
        assert len(lines) == 1, lines
        assert "0 calibration token(s)" in lines[0] and "pruned by magnitude" in lines[0]
    mods = {m["name"]: m for m in rep["modules"]}
    for n in names:
        assert mods[n]["method"] == "magnitude" and mods[n]["tokens"] == 0
        assert "fewer than --min-tokens 1" in mods[n]["fallback"]
        assert mods[n]["sparsity"] == pytest.approx(0.5, abs=1e-3)  # never a zeroed weight
    assert sorted(rep["totals"]["fallbacks"]) == sorted(names)
    assert "magnitude*" in format_table(rep) and "magnitude fallback" in format_table(rep)
    # the weights: magnitude pruning of the dense expert; the rest as the reference
    W = load(src).model.layers[0].mlp.experts.gate_up_proj.data[3, :32]
    got = load(out).model.layers[0].mlp.experts.gate_up_proj.data[3, :32]
    assert torch.equal(got, prune_weight(W, None, "magnitude", parse_pattern("0.5")).weight)
    _compare(naive_moe(src, read_calib(calib), parse_pattern("0.5"), "module", "sparsegpt"), out)


@pytest.mark.compat(family="qwen3_moe", order="layer", method="sparsegpt")
def test_moe_calibration_all_gives_every_expert_tokens(tmp_path, moe_dir, caplog):
    src = moe_dir("qwen3_moe", starve=3)
    calib = random_calib(tmp_path / "c.jsonl", LENGTHS)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="ssgr.prune"):
        rep = prune_model(_cfg(src, calib, out, sparsity="0.5", sequential="layer",
                               moe_calibration="all"))
    assert "pruned by magnitude" not in caplog.text and not rep["totals"]["fallbacks"]
    experts = [m for m in rep["modules"] if ".experts." in m["name"]]
    assert experts and all(m["tokens"] == sum(LENGTHS) for m in experts)
    ref = naive_moe(src, read_calib(calib), parse_pattern("0.5"), "layer", "sparsegpt",
                    calibration="all")
    _compare(ref, out)


def test_experts_that_compute_differently_are_refused(tmp_path, moe_dir, monkeypatch):
    """ssgr's per-expert statistics mirror the eager experts loop; a module that computes
    something else is refused by name instead of calibrated wrongly."""
    from transformers.models.qwen3_moe import modeling_qwen3_moe as q

    src = moe_dir("qwen3_moe")
    calib = random_calib(tmp_path / "c.jsonl", [20])
    orig = q.Qwen3MoeExperts.forward
    monkeypatch.setattr(q.Qwen3MoeExperts, "forward",
                        lambda self, *a, **k: 2 * orig(self, *a, **k))
    with pytest.raises(PruneError, match=r"mlp\.experts \(Qwen3MoeExperts\): its forward "
                                         r"differs.*--ignore experts"):
        prune_model(_cfg(src, calib, tmp_path / "out"))


@pytest.mark.compat(family="qwen2_moe", order="module", method="magnitude")
@pytest.mark.compat(family="qwen2_moe", order="layer", method="magnitude")
def test_targets_select_expert_projections(tmp_path, moe_dir):
    src = moe_dir("qwen2_moe")
    calib = random_calib(tmp_path / "c.jsonl", [20])
    rep = prune_model(_cfg(src, calib, tmp_path / "o1", targets=["down_proj"],
                           method="magnitude"))
    names = {m["name"].split(".", 3)[3] for m in rep["modules"]}
    assert names == {"mlp.shared_expert.down_proj"} | {f"mlp.experts.{e}.down_proj"
                                                        for e in range(4)}
    # --ignore experts leaves them dense; naming the router prunes it
    rep = prune_model(_cfg(src, calib, tmp_path / "o2", ignore=["experts"],
                           targets=["mlp", "shared_expert_gate"], method="magnitude",
                           sequential="layer"))
    names = {m["name"].split(".", 3)[3] for m in rep["modules"]}
    assert "mlp.shared_expert_gate" in names and not any(".experts." in n for n in names)
