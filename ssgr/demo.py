"""``ssgr demo``: prune a small random-init Llama in memory and print what happened.

A self-contained check that the ops, backends and hooks work end to end on this machine: a
seeded random LlamaForCausalLM, random calibration tokens, one-shot SparseGPT (or Wanda /
magnitude) over every decoder Linear, the per-module report, and the pattern verified.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from ssgr.info import info_text
from ssgr.prune.oneshot import format_table, prune_oneshot
from ssgr.prune.pattern import parse_pattern

log = logging.getLogger(__name__)


def tiny_llama(layers: int = 2, hidden: int = 128, vocab: int = 512, seed: int = 0) -> torch.nn.Module:
    """A seeded random-init ``LlamaForCausalLM`` (intermediate = 2 x hidden)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(cfg).eval()


def run_demo(
    sparsity: str = "2:4",
    method: str = "sparsegpt",
    layers: int = 2,
    hidden: int = 128,
    sequences: int = 8,
    seq_len: int = 256,
    seed: int = 0,
    backend: str | None = None,
) -> dict:
    """Run the demo; returns ``{"reports": [...], "seconds": float, "pattern": str}``."""
    pattern = parse_pattern(sparsity)
    sys.stdout.write(info_text() + "\n\n")
    model = tiny_llama(layers, hidden, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (1, seq_len), generator=gen) for _ in range(sequences)]
    t0 = time.perf_counter()
    reports = prune_oneshot(model, batches, pattern, method=method, backend=backend)
    seconds = time.perf_counter() - t0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}":
            W = mod.weight
            if pattern.is_nm:
                kept = (W.reshape(W.shape[0], -1, pattern.m) != 0).sum(-1)
                if int(kept.max()) > pattern.n:
                    raise RuntimeError(f"{name} violates {pattern}: a group keeps {int(kept.max())}")
    sys.stdout.write(
        f"{method} {pattern} on a random-init Llama ({layers} layers, hidden {hidden}), "
        f"{sequences} x {seq_len} calibration tokens, {seconds:.2f} s\n"
    )
    sys.stdout.write(format_table(reports) + "\n")
    return {"reports": reports, "seconds": seconds, "pattern": str(pattern)}
