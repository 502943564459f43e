"""In-memory one-shot pruning of every Linear inside a model's decoder layers.

All Hessians come from one pass of the dense model (hooks on every target Linear), then each
module is pruned with :func:`ssgr.ops.sparsegpt_prune` (or Wanda / magnitude). This is the simple,
non-sequential path for small models that fit in memory with their activations; long traces and
big models go through the streaming per-layer engine instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ssgr.ops import HessianAccumulator, nm_mask, sparsegpt_prune, topk_mask, wanda_scores
from ssgr.ops._registry import resolve

from .pattern import Pattern

log = logging.getLogger(__name__)


@dataclass
class ModuleReport:
    """What happened to one pruned module."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    loss: float | None
    damping: float | None
    tokens: int
    seconds: float
    backend: str


def find_decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{qualified name: Linear}`` for every nn.Linear inside the model's decoder layers.

    Decoder layers are the entries of the longest ``nn.ModuleList`` in the model (for HF causal
    LMs: ``model.layers``); embeddings and ``lm_head`` are never included.
    """
    lists = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    if not lists:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of decoder layers; pass a causal LM "
            "whose layers live in a ModuleList (e.g. model.model.layers)"
        )
    prefix, layers = max(lists, key=lambda nm: len(nm[1]))
    out = {}
    for i, layer in enumerate(layers):
        for n, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                out[f"{prefix}.{i}.{n}"] = mod
    if not out:
        raise ValueError(f"no nn.Linear found inside {prefix} of {type(model).__name__}")
    return out


@torch.no_grad()
def prune_oneshot(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    pattern: Pattern,
    *,
    method: str = "sparsegpt",
    blocksize: int = 128,
    percdamp: float = 0.01,
    backend: str | None = None,
) -> list[ModuleReport]:
    """Prune every decoder Linear of ``model`` in place; returns one report per module.

    Args:
        model: a causal LM (any module whose forward takes ``input_ids[b, t]``).
        batches: calibration ``input_ids[b, t]`` tensors (run unpadded, one at a time).
        pattern: unstructured fraction or N:M.
        method: ``sparsegpt``, ``wanda`` or ``magnitude``.
    """
    if method not in ("sparsegpt", "wanda", "magnitude"):
        raise ValueError(f"method must be sparsegpt, wanda or magnitude, got {method!r}")
    targets = find_decoder_linears(model)
    device = next(model.parameters()).device
    accs = {
        n: HessianAccumulator(
            mod.in_features, device, hessian=method == "sparsegpt", name=n, backend=backend
        )
        for n, mod in targets.items()
    }
    handles = []
    if method != "magnitude":
        for n, mod in targets.items():
            handles.append(
                mod.register_forward_pre_hook(lambda _m, args, acc=accs[n]: acc.add(args[0]))
            )
    try:
        for ids in tqdm(list(batches), desc="calibration", unit="seq", leave=False):
            model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids, device=device))
    finally:
        for h in handles:
            h.remove()
    reports = []
    for n, mod in tqdm(targets.items(), desc=f"{method} {pattern}", unit="module", leave=False):
        t0 = time.perf_counter()
        W = mod.weight.data
        loss = damping = None
        if method == "sparsegpt":
            res = sparsegpt_prune(
                W, accs[n].hessian(), blocksize=blocksize, percdamp=percdamp, backend=backend,
                **pattern.op_kwargs(),
            )
            W.copy_(res.weight)
            keep, loss, damping = res.mask, res.loss, res.damping
        else:
            scores = W.abs() if method == "magnitude" else wanda_scores(W, accs[n].col_sq_norms())
            if pattern.is_nm:
                keep = nm_mask(scores, pattern.n, pattern.m, backend=backend)
            else:
                keep = topk_mask(scores, pattern.sparsity, "row", backend=backend)
            W.mul_(keep)
        op = "sparsegpt" if method == "sparsegpt" else ("nm_mask" if pattern.is_nm else "topk_mask")
        used, _ = resolve(op, W.device, backend)
        reports.append(
            ModuleReport(
                name=n,
                shape=tuple(W.shape),
                sparsity=1.0 - float(keep.float().mean()),
                loss=loss,
                damping=damping,
                tokens=accs[n].tokens,
                seconds=time.perf_counter() - t0,
                backend=used,
            )
        )
        log.debug("pruned %s: %s", n, asdict(reports[-1]))
    return reports


def format_table(reports: list[ModuleReport]) -> str:
    """A readable per-module table."""
    head = f"{'module':<40} {'shape':>12} {'sparsity':>8} {'loss':>11} {'damp':>6} {'tokens':>7} {'sec':>6} backend"
    lines = [head, "-" * len(head)]
    for r in reports:
        loss = f"{r.loss:11.4g}" if r.loss is not None else f"{'-':>11}"
        damp = f"{r.damping:6.3g}" if r.damping is not None else f"{'-':>6}"
        shape = f"{r.shape[0]}x{r.shape[1]}"
        lines.append(
            f"{r.name:<40} {shape:>12} {r.sparsity:8.3f} {loss} {damp} {r.tokens:7d} {r.seconds:6.3f} {r.backend}"
        )
    return "\n".join(lines)
