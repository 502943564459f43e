"""Dense model families beyond Llama/Qwen: Gemma2/Gemma3 (scaled embeddings, soft-capping,
sliding and global layers, pre/post feed-forward norms), Phi-3 (dropout children), OLMo2
(post-norms only), GPT-2 (Conv1D projections) and Mistral with a sliding window shorter than the
calibration sequences, each pruned by the streaming engine in both orders and compared with the
naive whole-model reference (tests/prune/_prune_helpers.py)."""

from __future__ import annotations

import os

import pytest
import torch
from _prune_helpers import (
    compare_state,
    load,
    naive_prune,
    random_calib,
    read_calib,
    ref_attention,
    tiny_model,
)

from ssgr.prune.capture import (
    ATTENTION,
    BandMask,
    block_rows,
    blocked_attention,
    register_attention,
)
from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import PruneError
from ssgr.prune.orders import ModuleOrderError
from ssgr.prune.pattern import parse_pattern

#: Calibration lengths: the longest is 3x Gemma's window (16) and 4x Mistral's (12) below.
LENGTHS = [48, 9]

#: Smaller than the other prune tests' models: hidden 32, MLP 64, 4 heads (2 KV heads), 2 layers.
SMALL = {"hidden_size": 32, "intermediate_size": 64}

#: test id -> (family, overrides of :data:`SMALL`).
FAMILIES = {
    "gemma2": ("gemma2", {}),  # layer 0 sliding (window 16), layer 1 global, softcap 5
    "gemma3_text": ("gemma3_text", {"layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("phi3", {"sliding_window": 16}),  # Phi-3-mini-4k has a 2047-token window
    "olmo2": ("olmo2", {}),
    "gpt2": ("gpt2", {}),
    "mistral": ("mistral", {"sliding_window": 12}),  # every sequence but one is longer
}


def _cases():
    for tid, (family, _) in FAMILIES.items():
        for order in ("layer", "module"):
            yield pytest.param(tid, order, id=f"{tid}-{order}",
                               marks=pytest.mark.compat(family=family, order=order,
                                                        method="sparsegpt"))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, object] = {}

    def get(tid):
        if tid not in cache:
            family, over = FAMILIES[tid]
            cache[tid] = tiny_model(family, root / tid, **SMALL, **over)
        return cache[tid]
    return get


@pytest.mark.parametrize("tid,order", list(_cases()))
def test_family_equals_naive_reference(tmp_path, family_dirs, tid, order):
    family = FAMILIES[tid][0]
    src = family_dirs(tid)
    calib = random_calib(tmp_path / "c.jsonl", LENGTHS)
    out = tmp_path / "out"
    sparsity = "2:4" if order == "layer" else "0.5"
    rep = prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(out),
                                  sparsity=sparsity, sequential=order, device="cpu"))
    ref = naive_prune(src, read_calib(calib), parse_pattern(sparsity), order=order,
                      family=family)
    # GPT-2's Conv1D computes x @ W (addmm) where the engine's Linear computes x @ W.T: the
    # same map, rounded differently
    compare_state(ref, out, atol=1e-4 if family == "gpt2" else 2e-5)
    assert rep["status"] == "complete"
    assert all(m["tokens"] == sum(LENGTHS) for m in rep["modules"])
    if order == "module":
        return
    # the output is a normal model directory of the family
    m = load(out, ref_attention(family))
    ids = read_calib(calib)[0]
    torch.testing.assert_close(m(input_ids=ids).logits, ref(input_ids=ids).logits,
                               atol=2e-4, rtol=1e-4)


def test_gpt2_conv1d_pruned_as_linear_maps(tmp_path, family_dirs):
    """Default targets find GPT-2's Conv1D projections; they are pruned along their inputs
    (report shapes [out, in]) and written back in Conv1D's [in, out] layout."""
    src = family_dirs("gpt2")
    calib = random_calib(tmp_path / "c.jsonl", [30, 12])
    rep = prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(tmp_path / "o"),
                                  sparsity="2:4", sequential="layer", device="cpu"))
    shapes = {m["name"].removeprefix("transformer.h.0."): m["shape"] for m in rep["modules"]
              if m["name"].startswith("transformer.h.0.")}
    assert shapes == {"attn.c_attn": [96, 32], "attn.c_proj": [32, 32],
                      "mlp.c_fc": [64, 32], "mlp.c_proj": [32, 64]}
    from _prune_helpers import state
    w = state(tmp_path / "o")["transformer.h.0.mlp.c_fc.weight"]
    assert w.shape == (32, 64)  # Conv1D layout [in, out]
    # 2:4 along the inputs: groups of 4 consecutive input rows of each output column
    assert int((w.t().reshape(64, 8, 4) != 0).sum(-1).max()) <= 2


@pytest.mark.parametrize("tid", ["mistral", "gemma2", "gemma3_text"])
@torch.no_grad()
def test_blocked_attention_equals_model_forward(family_dirs, tid):
    """ssgr's attention (sliding windows and soft-capping in query blocks, no t x t mask) gives
    the model's own logits on a sequence 3-4x longer than the window (transformers' SDPA with
    its materialised sliding-window mask; eager for Gemma2's soft-capping)."""
    from transformers import AutoModelForCausalLM

    family = FAMILIES[tid][0]
    src = family_dirs(tid)
    ref = load(src, ref_attention(family))
    ours = AutoModelForCausalLM.from_pretrained(src, attn_implementation=register_attention(),
                                                dtype=torch.float32).eval()
    masks = {}

    def record(i):
        def pre(_m, _a, kw):
            masks.setdefault(i, kw.get("attention_mask"))
        return pre
    for i, layer in enumerate(ours.model.layers):
        layer.register_forward_pre_hook(record(i), with_kwargs=True)
    ids = torch.randint(0, 128, (1, 48), generator=torch.Generator().manual_seed(0))  # 3-4 x
    torch.testing.assert_close(ours(input_ids=ids).logits, ref(input_ids=ids).logits,
                               atol=1e-5, rtol=1e-5)
    window = 12 if family == "mistral" else 16
    sliding = [BandMask(window)] * 2 if family == "mistral" else [BandMask(window), None]
    assert [masks[i] for i in range(2)] == sliding


@torch.no_grad()
def test_blocked_attention_blocks_bound_the_scores():
    """Many small blocks (GQA, window, soft-capping) equal one dense masked softmax."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 70, 8, generator=g)
    k = torch.randn(1, 2, 70, 8, generator=g)
    v = torch.randn(1, 2, 70, 8, generator=g)
    qi, ki = torch.arange(70)[:, None], torch.arange(70)[None]
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    for window, softcap in [(9, None), (9, 2.0), (None, 2.0), (100, None)]:
        allowed = (ki <= qi) & ((ki > qi - window) if window else True)
        s = q @ kk.transpose(2, 3) * 0.3
        if softcap:
            s = torch.tanh(s / softcap) * softcap
        want = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vv
        got = blocked_attention(q, k, v, 0.3, window=window, softcap=softcap,
                                block_bytes=4 * 4 * 26 * 16)  # 16-query blocks
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the block's fp32 scores stay within the bound: 32k tokens through a 4096-token window, 32
    # heads, 64 MiB
    r = block_rows(1, 32, 32768, 4096)
    assert 16 < r < 4096 and 4 * 32 * r * (r + 4095) <= 64 * 2**20
    assert 4 * 32 * (r + 1) * (r + 4096) > 64 * 2**20  # and are as large as it allows
    assert block_rows(1, 32, 32768, None) == 16  # global layers: 16 rows x 32k keys


def test_module_order_refuses_parallel_residual_layers(tmp_path):
    """A layer that is not two residual sub-layers (GPT-NeoX parallel attention + MLP) is
    refused in module order with the class, its children and the fix; layer order prunes it."""
    import transformers as tf

    cfg = tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, vocab_size=128, max_position_embeddings=256,
                           use_parallel_residual=True)
    torch.manual_seed(0)
    tf.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "m")
    calib = random_calib(tmp_path / "c.jsonl", [20, 9])
    with pytest.raises(ModuleOrderError, match=r"GPTNeoXLayer .*--sequential layer"):
        prune_model(PruneConfig(model=str(tmp_path / "m"), calib=str(calib),
                                out=str(tmp_path / "o1"), sparsity="2:4", sequential="module",
                                device="cpu"))
    rep = prune_model(PruneConfig(model=str(tmp_path / "m"), calib=str(calib),
                                  out=str(tmp_path / "o2"), sparsity="2:4", sequential="layer",
                                  device="cpu"))
    assert rep["status"] == "complete"


def test_unsupported_families_refused_early(tmp_path):
    """Encoder-decoders and models without SDPA attention are refused before any work, naming
    the model class and the reason."""
    import transformers as tf

    calib = random_calib(tmp_path / "c.jsonl", [9])
    tf.T5Model(tf.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=128)
               ).save_pretrained(tmp_path / "t5")
    tf.MambaForCausalLM(tf.MambaConfig(hidden_size=32, num_hidden_layers=1, vocab_size=128)
                        ).save_pretrained(tmp_path / "mamba")
    for name, match in [("t5", r"T5Model .*encoder-decoder"),
                        ("mamba", r"MambaForCausalLM .*no SDPA attention")]:
        with pytest.raises(PruneError, match=match):
            prune_model(PruneConfig(model=str(tmp_path / name), calib=str(calib),
                                    out=str(tmp_path / f"o-{name}"), sparsity="2:4",
                                    device="cpu"))
        assert not (tmp_path / f"o-{name}" / "config.json").exists()


def test_registered_attention_name():
    assert register_attention() == ATTENTION


@pytest.mark.compat(family="gpt2", order="layer", method="sparsegpt")
def test_gpt2_oneshot_equals_engine_dense_propagation(tmp_path, family_dirs):
    """The in-memory one-shot path prunes GPT-2's Conv1D projections as the engine does."""
    from ssgr.prune.oneshot import prune_oneshot

    src = family_dirs("gpt2")
    calib = random_calib(tmp_path / "c.jsonl", [30, 12])
    prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(tmp_path / "o"),
                            sparsity="2:4", sequential="layer", propagate="dense",
                            device="cpu"))
    ref = load(src)
    recs = prune_oneshot(ref, read_calib(calib), parse_pattern("2:4"))
    assert len(recs) == 8 and recs[0].shape == [96, 32]
    compare_state(ref, tmp_path / "o", atol=1e-4)


def test_compat_table_lists_only_passing_tests(tmp_path):
    """benchmarks/compat_table.py: a combination is "tested" only when a test that runs it
    passes; a failing compat test leaves the README unchanged (exit 1)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "compat_table.py"
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_x.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.compat(family='fam_a', order='layer', method='wanda')\n"
        "def test_a(): pass\n"
        "@pytest.mark.compat(family='fam_b', order='module', method='sparsegpt')\n"
        "def test_b(): assert os.environ.get('B_OK') == '1'\n"
        "def test_unmarked(): raise AssertionError('not run: not marked')\n")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- compat-table:start -->\nold\n<!-- compat-table:end -->\ny\n")

    def run(env):
        return subprocess.run([sys.executable, str(script), "--readme", str(readme), "--tests",
                               str(tests), "--", "-W", "ignore::pytest.PytestUnknownMarkWarning"],
                              capture_output=True, text=True, env={**os.environ, **env})
    r = run({"B_OK": "0"})
    assert r.returncode == 1 and "test_b" in r.stderr
    assert "old" in readme.read_text()
    r = run({"B_OK": "1"})
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert text.startswith("x\n<!-- compat-table:start -->\n| family") and text.endswith(
        "<!-- compat-table:end -->\ny\n")
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| fam")}
    assert rows["| fam_a"].count("tested") == 1 and rows["| fam_b"].count("tested") == 1
    assert rows["| fam_a"].split(" | ")[2] == "tested"  # layer: wanda
    assert rows["| fam_b"].split(" | ")[4].strip(" |") == "tested"  # module: sparsegpt
