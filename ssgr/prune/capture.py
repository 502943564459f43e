"""Capture: the inputs of the first decoder layer for every calibration sequence.

Every sequence is run alone (batch 1, never padded) through the embeddings until a pre-hook on
layer 0 records its hidden states ``x[1, t, d]`` and the keyword arguments the model passes to its
layers (rotary ``position_embeddings`` for that length, positions). The attention mask must be
None: SDPA then uses its causal flag and no ``t x t`` mask is ever built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calib import CalibSequence
from .errors import PruneError
from .layers import _Stop
from .store import ActivationStore


def to_device(kw: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``kw`` with every tensor (also inside tuples) moved to ``device``."""
    def mv(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, tuple):
            return tuple(mv(t) for t in v)
        return v
    return {k: mv(v) for k, v in kw.items()}


def slice_kwargs(kw: dict[str, Any], t: int, full: int) -> dict[str, Any]:
    """Keyword arguments for the first ``t`` of ``full`` positions (the probe prefix): every
    tensor dimension of size ``full`` after the first (or of a 1-d tensor) is narrowed to ``t``."""
    def sl(v):
        if isinstance(v, torch.Tensor):
            for dim, size in enumerate(v.shape):
                if size == full and dim > 0 or (size == full and v.dim() == 1):
                    return v.narrow(dim, 0, t)
            return v
        if isinstance(v, tuple):
            return tuple(sl(x) for x in v)
        return v
    return {k: sl(v) for k, v in kw.items()}


class LayerKwargs:
    """The decoder layers' keyword arguments per sequence length, kept on ``home`` (the device
    when the activation store is there, else CPU) and moved to ``device`` on use."""

    def __init__(self, seqs: list[CalibSequence], device: torch.device) -> None:
        self.seqs = seqs
        self.device = device
        self.by_len: dict[int, dict[str, Any]] = {}

    def __call__(self, i: int) -> dict[str, Any]:
        """The keyword arguments of sequence ``i`` on the compute device."""
        return to_device(self.by_len[self.seqs[i].tokens], self.device)


@torch.no_grad()
def capture(
    model: nn.Module, layer0: nn.Module, seqs: list[CalibSequence], store: ActivationStore,
    device: torch.device, dtype: torch.dtype, keep_hidden: bool,
) -> LayerKwargs:
    """Run every sequence up to ``layer0``; returns the per-length layer keyword arguments.

    Args:
        model: the causal LM (embeddings loaded; decoder layers may still be on meta).
        layer0: its first decoder layer.
        seqs: the calibration sequences (``input_ids[1, t]`` int64).
        store: when ``keep_hidden``, sequence i's layer-0 input ``x[1, t, d]`` (``dtype``) is put
            in its slot ``"in"``.
        device: the compute device.
        dtype: the activation dtype.
        keep_hidden: False on ``--resume`` (the inputs come from the checkpoint).
    Raises:
        PruneError when the forward never reaches layer 0, or passes an attention mask or a KV
        cache to its layers.
    """
    box: dict = {}

    def hook(_m, args, kwargs):
        box["x"] = args[0] if args else kwargs["hidden_states"]
        box["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    kwargs = LayerKwargs(seqs, device)
    kw_dev = device if store.kind == "device" else torch.device("cpu")
    h = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, s in enumerate(tqdm(seqs, desc="capture layer-0 inputs", unit="seq", leave=False)):
            box.clear()
            try:
                model(input_ids=s.input_ids, use_cache=False)
            except _Stop:
                pass
            if "x" not in box:
                raise PruneError("the model's forward never reached its first decoder layer")
            kw = box["kw"]
            if kw.get("attention_mask") is not None:
                raise PruneError(
                    "the model builds an explicit attention mask for an unpadded sequence "
                    "(sliding window or a non-SDPA attention); ssgr runs attention through "
                    "SDPA's causal flag only, so this model is not supported"
                )
            if kw.get("past_key_values") is not None:
                raise PruneError("the model passes a KV cache to its layers with "
                                 "use_cache=False; it is not supported")
            if s.tokens not in kwargs.by_len:
                kwargs.by_len[s.tokens] = to_device(kw, kw_dev)
            if keep_hidden:
                store.put("in", i, box["x"].to(dtype))
    finally:
        h.remove()
    return kwargs
