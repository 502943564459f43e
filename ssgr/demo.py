"""``ssgr demo``: prune a small random-init Llama in memory and print what happened.

A self-contained check that the ops, backends and hooks work end to end on this machine: a
seeded random LlamaForCausalLM, random calibration tokens, one-shot SparseGPT (or Wanda /
magnitude) over every decoder Linear, the per-module report, and the pattern verified.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from ssgr.options import option

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METHODS = ("sparsegpt", "wanda", "magnitude")


@dataclasses.dataclass
class DemoConfig:
    """Options of ``ssgr demo`` (and of :func:`run_demo`)."""

    sparsity: str = option("2:4", help="0.5, 2:4, 4:8, N:M")
    method: str = option("sparsegpt", choices=METHODS, help="pruning method")
    layers: int = option(2, help="decoder layers of the random-init Llama")
    hidden: int = option(128, help="hidden size (intermediate = 2 x hidden)")
    sequences: int = option(8, help="calibration sequences")
    seq_len: int = option(256, help="tokens per calibration sequence")
    seed: int = option(0, help="seed of the weights and the calibration tokens")
    backend: str | None = option(
        None, help="force a kernel backend (reference, cpu, triton, cuda; see `ssgr info`)"
    )


def parse_sparsity(text: str) -> Any:
    """:func:`ssgr.prune.pattern.parse_pattern`, with a bad pattern raised as
    :class:`~ssgr.errors.InputError` (exit status 2 on the command line)."""
    from ssgr.errors import InputError, SSGRError
    from ssgr.prune.pattern import parse_pattern

    try:
        return parse_pattern(text)
    except ValueError as e:
        if isinstance(e, SSGRError):
            raise
        raise InputError(str(e)) from None


def _check_sizes(cfg: DemoConfig) -> None:
    """Refuse sizes the demo model cannot have, naming the option (before any work)."""
    from ssgr.errors import InputError

    for name in ("layers", "hidden", "sequences", "seq_len"):
        v = getattr(cfg, name)
        if v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    heads = max(1, cfg.hidden // 32)
    if cfg.hidden % heads or (cfg.hidden // heads) % 2:
        raise InputError(
            f"--hidden {cfg.hidden} does not split into {heads} attention head(s) of an even "
            "size; use a multiple of 64 (or an even number below 64)"
        )


def tiny_llama(
    layers: int = 2, hidden: int = 128, vocab: int = 512, seed: int = 0
) -> torch.nn.Module:
    """A seeded random-init ``LlamaForCausalLM`` (intermediate = 2 x hidden), fp32 on the CPU."""
    import torch
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


def run_demo(cfg: DemoConfig | None = None, **options: Any) -> dict[str, Any]:
    """Run the demo; returns ``{"reports": [...], "seconds": float, "pattern": str}``.

    ``options`` override fields of ``cfg`` (``run_demo(sparsity="0.5", layers=1)``). Prints the
    support matrix, the per-module report table and a summary line to stdout. Raises
    :class:`~ssgr.errors.InputError` for a bad sparsity, method or size (naming the option),
    and ``RuntimeError`` if a pruned weight violates the N:M pattern (a bug, never expected).
    """
    import torch

    from ssgr.info import info_text
    from ssgr.prune.oneshot import format_table, prune_oneshot

    cfg = dataclasses.replace(cfg or DemoConfig(), **options)
    sparsity, method, layers, hidden = cfg.sparsity, cfg.method, cfg.layers, cfg.hidden
    sequences, seq_len, seed, backend = cfg.sequences, cfg.seq_len, cfg.seed, cfg.backend
    pattern = parse_sparsity(sparsity)
    _check_sizes(cfg)
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
                    raise RuntimeError(
                        f"{name} violates {pattern}: a group keeps {int(kept.max())}"
                    )
    sys.stdout.write(
        f"{method} {pattern} on a random-init Llama ({layers} layers, hidden {hidden}), "
        f"{sequences} x {seq_len} calibration tokens, {seconds:.2f} s\n"
    )
    sys.stdout.write(format_table(reports) + "\n")
    return {"reports": reports, "seconds": seconds, "pattern": str(pattern)}
