"""SSGRSparseGPTModifier / SSGRWandaPruningModifier against the stock llm-compressor modifiers in
``oneshot`` on a tiny random-init Llama (same data): same masks, same weights to fp32 rounding."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llmcompressor")

import copy  # noqa: E402

from _compat_util import (  # noqa: E402
    calibration_set,
    modifier_route,
    run_oneshot,
    tiny_llama,
    tokenizer,
)
from llmcompressor.modifiers.pruning import (  # noqa: E402
    SparseGPTModifier,
    WandaPruningModifier,
)

from ssgr.compat.llmcompressor import (  # noqa: E402
    SSGRSparseGPTModifier,
    SSGRWandaPruningModifier,
    register_modifiers,
)

pytestmark = pytest.mark.peer

PAIRS = {
    "sparsegpt": (SparseGPTModifier, SSGRSparseGPTModifier),
    "wanda": (WandaPruningModifier, SSGRWandaPruningModifier),
}
PATTERNS = {"50%": dict(sparsity=0.5), "2:4": dict(sparsity=0.5, mask_structure="2:4")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
    return model, calibration_set(), tokenizer()


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("method", list(PAIRS))
def test_oneshot_equals_stock(setup, method, pattern):
    model, ds, tok = setup
    stock_cls, ssgr_cls = PAIRS[method]
    kw = dict(PATTERNS[pattern], targets=["Linear"], ignore=["re:.*lm_head"])
    stock = run_oneshot(model, stock_cls(**kw), ds, tok)
    ours = run_oneshot(model, ssgr_cls(**kw), ds, tok)
    assert len(stock) == 14 and stock.keys() == ours.keys()  # 2 layers x 7 linears
    for name, Ws in stock.items():
        Wo = ours[name]
        assert torch.equal(Wo == 0, Ws == 0), f"{name}: masks differ"
        torch.testing.assert_close(Wo, Ws, rtol=1e-4, atol=1e-5, msg=f"{name}: weights differ")
        if "mask_structure" in kw:
            kept = (Wo != 0).reshape(Wo.shape[0], -1, 4).sum(-1)
            assert int(kept.max()) <= 2, f"{name}: not 2:4"
        else:
            assert (Wo == 0).float().mean().item() >= 0.5, f"{name}: below 50% sparsity"
    # and pruning really happened with respect to the dense model
    dense = dict(model.named_modules())
    name = next(iter(stock))
    assert not torch.equal(dense[name].weight, ours[name])


def test_fields_are_the_stock_ones():
    for stock_cls, ssgr_cls in PAIRS.values():
        assert issubclass(ssgr_cls, stock_cls)
        assert set(ssgr_cls.model_fields) == set(stock_cls.model_fields) | {"ssgr_backend"}
    m = SSGRSparseGPTModifier(sparsity=0.5, mask_structure="4:8", block_size=64,
                              dampening_frac=0.05, targets=["Linear"], ignore=["re:.*lm_head"])
    assert (m._prune_n, m._prune_m, m.block_size, m.dampening_frac) == (4, 8, 64, 0.05)


def test_yaml_recipe_after_register():
    from llmcompressor.recipe import Recipe

    register_modifiers()
    yaml = """
    prune_stage:
      sparsity_modifiers:
        SSGRWandaPruningModifier:
          sparsity: 0.5
          mask_structure: "2:4"
        SSGRSparseGPTModifier:
          sparsity: 0.5
          block_size: 64
    """
    recipe = Recipe.create_instance(yaml)
    kinds = {type(m) for m in recipe.modifiers}
    assert kinds == {SSGRWandaPruningModifier, SSGRSparseGPTModifier}


@pytest.mark.parametrize(
    "cls,kw,match",
    [
        (SSGRSparseGPTModifier, dict(dampening_frac=0.0), "dampening_frac must be > 0"),
        (SSGRSparseGPTModifier, dict(mask_structure="2:4", block_size=30),
         "block_size=30 is not a multiple of M=4"),
        (SSGRSparseGPTModifier, dict(mask_structure="4:4"), r"0 < N < M"),
        (SSGRWandaPruningModifier, dict(mask_structure="5:4"), r"0 < N < M"),
    ],
)
def test_bad_fields_are_clear_errors(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(sparsity=0.5, **kw)


def _equal_route(stock_cls, ssgr_cls, kw, layer, batches):
    stock = modifier_route(stock_cls, kw, copy.deepcopy(layer), batches)
    ours = modifier_route(ssgr_cls, kw, copy.deepcopy(layer), batches)
    assert torch.equal(ours == 0, stock == 0)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)
    assert ours.dtype == layer.weight.dtype and ours.shape == layer.weight.shape


@pytest.mark.parametrize("method", list(PAIRS))
def test_modifier_hooks_on_gpt2_conv1d(seed, method):
    """The modifiers' hook + compress on a GPT-2 Conv1D equal the stock ones."""
    import transformers

    layer = transformers.Conv1D(64, 64)  # square: stock sizes its statistics by weight.shape[1]
    batches = [torch.randn(b, 9, 64) for b in (2, 3)]
    _equal_route(*PAIRS[method], dict(sparsity=0.5, mask_structure="2:4"), layer, batches)


def test_modifier_hooks_on_conv2d(seed):
    """Conv2d: the stock modifiers size their statistics by in_channels (and crash), so compare
    with llm-compressor's accumulate/sparsify functions given correctly sized statistics."""
    from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
    from llmcompressor.modifiers.pruning.wanda import wanda_sparsify

    layer = torch.nn.Conv2d(4, 8, 3, padding=1)
    batches = [torch.randn(b, 4, 6, 6) for b in (2, 3)]
    kw = dict(sparsity=0.5, mask_structure="2:4")
    H, S, n, ns = torch.zeros(36, 36), torch.zeros(36), 0, 0
    for x in batches:
        H, n = sgpt_sparsify.accumulate_hessian(x, layer, H, n)
        S, ns = wanda_sparsify.accumulate_row_scalars(x, layer, S, ns)
    peer = copy.deepcopy(layer)
    with torch.no_grad():
        _, Q = sgpt_sparsify.sparsify_weight(peer, {peer: H}, 0.5, 2, 4, 128, 0.01, False)
        Qw = wanda_sparsify.sparsify_weight(peer, {peer: S}, 0.5, 2, 4)
    ours = modifier_route(SSGRSparseGPTModifier, kw, copy.deepcopy(layer), batches)
    assert torch.equal(ours == 0, Q == 0)
    torch.testing.assert_close(ours, Q, rtol=1e-4, atol=1e-5)
    ours_w = modifier_route(SSGRWandaPruningModifier, kw, copy.deepcopy(layer), batches)
    assert torch.equal(ours_w, Qw)


def test_offload_hessians_and_preserve_mask(seed):
    """offload_hessians (stock context manager on the ssgr Hessian) and preserve_sparsity_mask
    (pruned by llm-compressor's own sparsify_weight) give the stock result."""
    layer = torch.nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[:, ::3] = 0  # an existing mask to preserve
    batches = [torch.randn(2, 20, 64) for _ in range(3)]
    for extra in (dict(offload_hessians=True), dict(preserve_sparsity_mask=True)):
        _equal_route(SparseGPTModifier, SSGRSparseGPTModifier, dict(sparsity=0.5, **extra),
                     layer, batches)
    kept = modifier_route(SSGRSparseGPTModifier, dict(sparsity=0.5, preserve_sparsity_mask=True),
                          copy.deepcopy(layer), batches)
    assert bool((kept[:, ::3] == 0).all())


def test_unsupported_module_is_a_clear_error():
    with pytest.raises(ValueError, match=r"conv.*unsupported layer type Conv1d"):
        modifier_route(SSGRSparseGPTModifier, dict(sparsity=0.5), torch.nn.Conv1d(4, 4, 3),
                       [torch.randn(1, 4, 8)], name="conv")
