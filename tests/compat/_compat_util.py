"""Helpers for the compat tests: a tiny random-init Llama, an in-memory tokenizer and calibration
set (no hub access), and llm-compressor's ``oneshot`` on a copy of the model."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

VOCAB = 128


def tiny_llama(config_dir: Path, seed: int = 0):
    """Random-init Llama (hidden 64, 2 layers, intermediate 128, vocab 128), fp32, eval mode.

    Its config is saved to ``config_dir`` and used as ``name_or_path`` (oneshot reloads the
    config from there)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, intermediate_size=128, vocab_size=VOCAB,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    cfg.save_pretrained(config_dir)
    model.config._name_or_path = str(config_dir)
    model.name_or_path = str(config_dir)
    return model


def tokenizer():
    """A word-level fast tokenizer over tokens ``t0 .. t127`` (built in memory)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t1",
                                   eos_token="t2", bos_token="t3")


def calibration_set(samples: int = 6, tokens: int = 24, seed: int = 1):
    """``datasets.Dataset`` of random ``input_ids`` / ``attention_mask`` rows."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (samples, tokens), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )


def run_oneshot(model, recipe, dataset, tok) -> dict[str, torch.Tensor]:
    """oneshot on a deep copy of ``model``; returns the decoder Linear weights by name."""
    from llmcompressor import oneshot

    m = copy.deepcopy(model)
    logging.getLogger(__name__).info("oneshot with %s", type(recipe).__name__)
    oneshot(model=m, dataset=dataset, recipe=recipe, tokenizer=tok,
            num_calibration_samples=len(dataset), max_seq_length=len(dataset[0]["input_ids"]),
            pipeline="sequential", shuffle_calibration_samples=False)
    return {
        name: mod.weight.detach().clone()
        for name, mod in m.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".layers." in name
    }


def modifier_route(cls, kw: dict, module: torch.nn.Module, batches: list[torch.Tensor],
                   name: str = "layer") -> torch.Tensor:
    """What oneshot does for one module, without a model: the modifier's forward-hook method
    on every batch, then ``compress_modules``. Returns the module's new weight."""
    mod = cls(**kw)
    mod._module_names[module] = name
    mod._module_sparsities[module] = kw["sparsity"]
    with torch.no_grad():
        for x in batches:
            mod.calibrate_module(module, (x,), None)
        mod.compress_modules()
    assert not mod._num_samples, "every calibrated module was compressed"
    return module.weight.detach().clone()
