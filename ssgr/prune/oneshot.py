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
from dataclasses import asdict

import torch
from torch import nn
from tqdm.auto import tqdm

from ssgr.compat._layers import _conv1d_type, layer_kind, weight_2d, write_weight_2d
from ssgr.ops import HessianAccumulator

from .errors import PruneError
from .methods import METHODS, prune_weight
from .pattern import Pattern
from .report import ModuleRecord, format_modules

log = logging.getLogger(__name__)


def find_decoder_linears(model: nn.Module) -> dict[str, tuple[int, nn.Module]]:
    """``{qualified name: (layer index, module)}`` for every linear map inside the model's decoder
    layers: ``nn.Linear`` and transformers ``Conv1D`` (GPT-2; weight stored ``[in, out]``, pruned
    as ``W.T``, see :mod:`ssgr.compat._layers`).

    Decoder layers are the entries of the longest ``nn.ModuleList`` in the model (for HF causal
    LMs: ``model.layers``); embeddings and ``lm_head`` are never included.
    """
    lists = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    if not lists:
        raise PruneError(
            f"{type(model).__name__} has no nn.ModuleList of decoder layers; pass a causal LM "
            "whose layers live in a ModuleList (e.g. model.model.layers)"
        )
    prefix, layers = max(lists, key=lambda nm: len(nm[1]))
    conv1d = _conv1d_type()
    kinds = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    out = {}
    for i, layer in enumerate(layers):
        for n, mod in layer.named_modules():
            if isinstance(mod, kinds):
                out[f"{prefix}.{i}.{n}"] = (i, mod)
    if not out:
        raise PruneError(f"no nn.Linear or transformers Conv1D found inside {prefix} of "
                         f"{type(model).__name__}")
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
) -> list[ModuleRecord]:
    """Prune every decoder Linear of ``model`` in place; returns one report per module.

    Args:
        model: a causal LM (any module whose forward takes ``input_ids[b, t]``).
        batches: calibration ``input_ids[b, t]`` tensors (run unpadded, one at a time).
        pattern: unstructured fraction or N:M.
        method: ``sparsegpt``, ``wanda`` or ``magnitude``.
    Raises:
        PruneError (a ``ValueError``) for an unknown method or a model without decoder Linears.
    """
    if method not in METHODS:
        raise PruneError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    found = find_decoder_linears(model)
    targets = {n: mod for n, (_, mod) in found.items()}
    kinds = {n: layer_kind(mod, n) for n, mod in targets.items()}
    device = next(model.parameters()).device
    accs = {
        n: HessianAccumulator(
            weight_2d(mod, kinds[n]).shape[1], device, hessian=method == "sparsegpt", name=n,
            backend=backend,
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
        W = weight_2d(mod, kinds[n])  # [out, in]
        res = prune_weight(
            W, accs[n], method, pattern, blocksize=blocksize, percdamp=percdamp, backend=backend
        )
        write_weight_2d(mod, kinds[n], res.weight)
        reports.append(
            ModuleRecord(
                name=n,
                layer=found[n][0],
                group=n,
                shape=list(W.shape),
                sparsity=1.0 - float(res.mask.float().mean()),
                loss=res.loss,
                damping=res.damping,
                tokens=accs[n].tokens,
                seconds=time.perf_counter() - t0,
                backend=res.backend,
            )
        )
        log.debug("pruned %s: %s", n, asdict(reports[-1]))
    return reports


def format_table(reports: list[ModuleRecord]) -> str:
    """A readable per-module table."""
    return "\n".join(format_modules([asdict(r) for r in reports]))
