"""Helpers for the prune tests: tiny random-init models saved as safetensors, calibration files,
the naive in-memory reference pruner, and pattern checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from ssgr.ops import HessianAccumulator
from ssgr.prune.methods import prune_weight
from ssgr.prune.pattern import Pattern

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=8192)
STAGES = (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
          ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"])


#: family -> (config class, model class) of transformers; the dense families ssgr prunes.
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
           "mistral": ("MistralConfig", "MistralForCausalLM"),
           "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
           "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
           "phi3": ("Phi3Config", "Phi3ForCausalLM"),
           "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
           "gpt2": ("GPT2Config", "GPT2LMHeadModel")}

#: family -> its Hessian groups in call order (module order's stages).
FAMILY_STAGES = {
    **{f: STAGES for f in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text",
                           "olmo2")},
    "phi3": (["self_attn.qkv_proj"], ["self_attn.o_proj"], ["mlp.gate_up_proj"],
             ["mlp.down_proj"]),
    "gpt2": (["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]),
}


def _family_kwargs(family: str, kw: dict) -> dict:
    if family == "qwen3":
        kw.setdefault("head_dim", kw["hidden_size"] // kw["num_attention_heads"])
    if family == "mistral":
        kw.setdefault("sliding_window", None)
    if family in ("gemma2", "gemma3_text"):
        kw.setdefault("head_dim", kw["hidden_size"] // kw["num_attention_heads"])
        kw.setdefault("query_pre_attn_scalar", kw["head_dim"])
        kw.setdefault("sliding_window", 16)
        kw.setdefault("pad_token_id", 0)
    if family == "gemma2":
        kw.setdefault("attn_logit_softcapping", 5.0)  # small: the cap changes the logits
        kw.setdefault("final_logit_softcapping", 3.0)
    if family in ("phi3", "olmo2"):
        kw.setdefault("pad_token_id", 0)
        kw.setdefault("bos_token_id", 0)
        kw.setdefault("eos_token_id", 0)
    if family == "gpt2":
        kw = {"n_embd": kw["hidden_size"], "n_layer": kw["num_hidden_layers"],
              "n_head": kw["num_attention_heads"], "n_inner": kw["intermediate_size"],
              "vocab_size": kw["vocab_size"], "n_positions": 1024,
              "bos_token_id": 0, "eos_token_id": 0}
    return kw


def tiny_model(family: str, folder: Path, seed: int = 0, max_shard_size: str | None = None,
               **overrides) -> Path:
    """Save a seeded random-init tiny causal LM of ``family`` (a key of :data:`CLASSES`) to
    ``folder`` (safetensors)."""
    import transformers as tf

    cls = CLASSES[family]
    kw = _family_kwargs(family, {**TINY, **overrides})
    torch.manual_seed(seed)
    model = getattr(tf, cls[1])(getattr(tf, cls[0])(**kw)).eval()
    with torch.no_grad():  # larger weights than the 0.02-std init: pruning choices matter more
        for n, p in model.named_parameters():
            if p.dim() == 2 and (".layers." in n or ".h." in n):
                p.normal_(0, 0.2)
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **extra)
    return folder


def random_calib(path: Path, lengths: list[int], vocab: int = 128, seed: int = 1) -> Path:
    """A calibration jsonl of random token ids with the given lengths."""
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for i, n in enumerate(lengths):
            ids = torch.randint(0, vocab, (n,), generator=g).tolist()
            f.write(json.dumps({"input_ids": ids, "id": f"s{i}"}) + "\n")
    return path


def read_calib(path: Path) -> list[torch.Tensor]:
    return [torch.tensor([json.loads(line)["input_ids"]]) for line in open(path)]


def load(folder: Path, attn: str = "sdpa") -> nn.Module:
    """The saved model, float32, eval mode. Families whose attention SDPA cannot express
    (Gemma2's logit soft-capping) need ``attn="eager"`` for a faithful reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation=attn, dtype=torch.float32).eval()


def ref_attention(family: str) -> str:
    """The attention implementation of the reference: transformers' eager one where only it
    computes the family's attention exactly (soft-capping), else SDPA."""
    return "eager" if family == "gemma2" else "sdpa"


def decoder_projections(layer: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """``{name: (module, transposed)}`` of a decoder layer's Linear and transformers Conv1D
    projections (Conv1D stores its weight ``[in, out]``: ``transposed``)."""
    from transformers.pytorch_utils import Conv1D

    return {n: (m, isinstance(m, Conv1D)) for n, m in layer.named_modules()
            if isinstance(m, (nn.Linear, Conv1D))}


def state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model directory (all shards)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@torch.no_grad()
def naive_prune(folder: Path, seqs: list[torch.Tensor], pattern: Pattern, order: str = "layer",
                method: str = "sparsegpt", blocksize: int = 128, percdamp: float = 0.01,
                scope: str = "row", select: list[torch.Tensor | None] | None = None,
                family: str = "llama") -> nn.Module:
    """The reference: for each layer in turn, the whole model (earlier layers already pruned) is
    re-run on every sequence with hooks on that layer's modules, one Hessian per module, in memory.
    ``order="module"`` re-runs the model once per stage (``FAMILY_STAGES[family]``: q/k/v, o,
    gate/up, down). ``select``: per sequence, the positions whose inputs feed the statistics
    (None: all). Conv1D projections (GPT-2) are pruned as the linear map ``W.T[out, in]``."""
    from ssgr.prune.layers import find_decoder_layers

    cur = {"sel": None}

    def feed(acc, x):
        acc.add(x if cur["sel"] is None else x[:, cur["sel"]])

    model = load(folder, ref_attention(family))
    for layer in find_decoder_layers(model)[1]:
        mods = decoder_projections(layer)
        stages = [list(mods)] if order == "layer" else [list(s) for s in FAMILY_STAGES[family]]
        for stage in stages:
            accs = {n: HessianAccumulator(_in_features(*mods[n]), hessian=method == "sparsegpt")
                    for n in stage}
            hs = [mods[n][0].register_forward_pre_hook(
                lambda _m, a, acc=accs[n]: feed(acc, a[0])) for n in stage]
            for i, ids in enumerate(seqs):
                cur["sel"] = select[i] if select is not None else None
                model(input_ids=ids)
            for h in hs:
                h.remove()
            for n in stage:
                mod, transposed = mods[n]
                W = mod.weight.data.t() if transposed else mod.weight.data
                res = prune_weight(W.contiguous(), accs[n], method, pattern,
                                   blocksize=blocksize, percdamp=percdamp, scope=scope)
                W.copy_(res.weight)
    return model


def _in_features(mod: nn.Module, transposed: bool) -> int:
    return int(mod.weight.shape[0] if transposed else mod.weight.shape[1])


def compare_state(ref_model: nn.Module, out_dir: Path, atol: float = 2e-5) -> None:
    """Every tensor of the pruned directory ``out_dir`` equals the reference model's (``atol``,
    rtol 1e-4), and the output really is pruned (a decoder weight with zeros)."""
    got = state(out_dir)
    ref_sd = ref_model.state_dict()
    assert set(got) <= set(ref_sd), set(got) - set(ref_sd)
    for k, v in got.items():
        torch.testing.assert_close(v, ref_sd[k], atol=atol, rtol=1e-4, msg=k)
    assert any(v.dim() == 2 and float((v == 0).float().mean()) >= 0.45 for k, v in got.items()
               if ".0." in k)


def run_cli(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """``python -m ssgr.prune ARGS`` in a subprocess."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ssgr.prune", *map(str, args)], env=e,
                          capture_output=True, text=True, **kw)


def check_pattern(W: torch.Tensor, pattern: Pattern, scope: str = "row",
                  blocksize: int | None = None) -> None:
    """Assert ``W[r, c]`` obeys the pattern exactly."""
    nz = W != 0
    r, c = W.shape
    if pattern.is_nm:
        per_group = nz.reshape(r, c // pattern.m, pattern.m).sum(-1)
        assert int(per_group.max()) <= pattern.n, f"a group keeps {int(per_group.max())}"
        return
    if blocksize is not None:  # SparseGPT: the ratio is applied per block of columns
        for i in range(0, c, blocksize):
            blk = nz[:, i:i + blocksize]
            assert int((~blk).sum()) >= int(blk.numel() * pattern.sparsity)
        return
    if scope == "row":
        want = int(c * pattern.sparsity)
        assert int((~nz).sum(1).min()) >= want and int((~nz).sum(1).max()) == want
    else:
        assert int((~nz).sum()) == int(r * c * pattern.sparsity)
