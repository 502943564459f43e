"""Capture: the inputs of the decoder layers for every calibration sequence, and the attention.

Every sequence is run alone (batch 1, never padded) through the embeddings; each decoder layer's
``forward`` is replaced for the duration by a recorder, so the run records the hidden states
``x[1, t, d]`` reaching layer 0 and the keyword arguments the model passes to *each* layer
(rotary ``position_embeddings``, positions, the attention mask of the layer's type: families
such as Gemma2/3 alternate sliding-window and global layers, and Gemma3 gives them different
rotary tables). The recorders pass the hidden states through unchanged and the run stops after
the last layer, so no decoder weight is touched (they may still be on the meta device).

Attention (:data:`ATTENTION`): the skeleton runs an attention implementation registered with
transformers' ``AttentionInterface`` / ``AttentionMaskInterface`` under the name ``ssgr_sdpa``.
Its mask function (:func:`band_mask`) returns None for a plain causal mask (exactly what
transformers' ``sdpa_mask`` returns: SDPA then uses its causal flag, and Llama, Mistral, Qwen2/3
run bit-identically to ``attn_implementation="sdpa"``), and a :class:`BandMask` (the window size
only) for a sliding-window causal mask, checked against the mask function transformers composed
for the layer (``sliding_window_causal_mask_function`` in ``transformers/masking_utils.py``: key
``k`` is visible from query ``q`` when ``q - window < k <= q``). :func:`attention` computes such a
layer, and attention logit soft-capping (Gemma2: ``softcap * tanh(s / softcap)``, the eager
formula of ``modeling_gemma2.eager_attention_forward``), in blocks of queries against only the
keys in their window, so no ``t x t`` mask or score matrix is ever built: the largest temporary is
``heads x block x (block + window)`` scores, at most :data:`BLOCK_BYTES` (a 32k-token trace
through a 4096-token window costs what a 4096-token one costs). Any other mask (padding,
bidirectional overlays) is built by ``sdpa_mask`` as transformers does, and :func:`capture`
refuses it, naming the reason.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .calib import CalibSequence
from .errors import PruneError
from .layers import _Stop, find_decoder_layers
from .store import ActivationStore

#: The attention implementation name the engine's skeleton is built with (see module doc).
ATTENTION = "ssgr_sdpa"

#: Upper bound in bytes of one block of attention scores in :func:`attention` (fp32).
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class BandMask:
    """A sliding-window causal mask, held as its window: query ``q`` sees keys ``k`` with
    ``q - window < k <= q`` (transformers' ``sliding_window_causal_mask_function``). Passed to
    the decoder layers in place of a ``[1, 1, t, t]`` boolean tensor."""

    window: int


def _is_band(mask_function, q_length: int, window: int | None) -> bool:
    """Does transformers' composed ``mask_function`` equal the causal (``window`` None) or
    sliding-window causal mask? Checked on a few query rows (a row is ``q_length`` booleans)."""
    rows = sorted({0, q_length - 1, q_length // 2} | (
        {window - 1, window, min(q_length - 1, 2 * window)} if window else set()))
    rows = [r for r in rows if 0 <= r < q_length]
    q = torch.tensor(rows)[:, None]
    k = torch.arange(q_length)[None, :]
    zero = torch.zeros((), dtype=torch.long)
    got = mask_function(zero, zero, q, k)
    want = k <= q
    if window is not None:
        want = want & (k > q - window)
    return bool(torch.equal(torch.as_tensor(got).expand_as(want), want))


def band_mask(
    batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
    mask_function=None, attention_mask: torch.Tensor | None = None,
    local_size: int | None = None, allow_is_causal_skip: bool = True, **kwargs,
) -> torch.Tensor | BandMask | None:
    """transformers mask interface of :data:`ATTENTION` (same arguments as
    ``masking_utils.sdpa_mask``): None for a plain causal mask, a :class:`BandMask` for an
    unpadded sliding-window one (``local_size`` = the window), else ``sdpa_mask``'s
    ``[b, 1, q, kv]`` boolean tensor."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    plain = (allow_is_causal_skip and q_offset == 0 and kv_offset == 0 and q_length == kv_length
             and (attention_mask is None or bool(attention_mask.all())))
    if plain:
        window = local_size if local_size is not None and q_length > local_size else None
        if _is_band(mask_function, q_length, window):
            return None if window is None else BandMask(int(window))
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                     q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                     attention_mask=attention_mask, local_size=local_size,
                     allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def block_rows(b: int, h: int, t: int, window: int | None, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per block of :func:`blocked_attention`: the most rows ``r`` whose fp32 scores
    ``b x h x r x keys`` fit ``block_bytes``, where a block sees ``keys = r + window - 1`` keys
    with a window and up to ``t`` without; at least 16 (then the bound is exceeded only for
    ``16 x keys``), at most ``t``."""
    unit = 4 * b * h  # bytes per score row entry over batch and heads
    cap = max(1, block_bytes // unit)
    if window is None or window >= t:
        rows = cap // t
    else:  # rows * (rows + window - 1) <= cap
        span = window - 1
        rows = int((-span + math.sqrt(span * span + 4 * cap)) // 2)
        while rows > 0 and rows * (rows + span) > cap:
            rows -= 1
    return max(1, min(t, max(16, rows)))


def blocked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
    window: int | None = None, softcap: float | None = None,
    mask: torch.Tensor | None = None, block_bytes: int = BLOCK_BYTES,
) -> torch.Tensor:
    """Causal attention in blocks of queries, each against only the keys it may see.

    Args:
        query: ``[b, h, t, d]``; key, value: ``[b, h_kv, t, d]`` (``h`` a multiple of ``h_kv``:
            grouped-query attention), any float dtype.
        scaling: the logit scale (``module.scaling``).
        window: sliding window in tokens (query ``q`` sees keys ``q - window < k <= q``), None
            for full causal attention.
        softcap: attention logit soft-capping ``softcap * tanh(s / softcap)`` (Gemma2), then an
            fp32 softmax as transformers' eager attention does; None: SDPA per block.
        mask: an explicit ``[b, 1, t, t]`` boolean mask (True = attend) used instead of the
            causal/window pattern (then every block sees every key).
        block_bytes: bound of one block's fp32 scores ``b x h x block x keys``.
    Returns:
        ``[b, h, t, d]`` in ``query``'s dtype.
    """
    b, h, t, d = query.shape
    rep = h // key.shape[1]
    block = block_rows(b, h, t, None if mask is not None else window, block_bytes)
    out = torch.empty_like(query)
    for i0 in range(0, t, block):
        i1 = min(t, i0 + block)
        k0 = 0 if window is None or mask is not None else max(0, i0 - window + 1)
        kb, vb = key[:, :, k0:i1], value[:, :, k0:i1]
        if rep > 1:
            kb, vb = kb.repeat_interleave(rep, 1), vb.repeat_interleave(rep, 1)
        if mask is not None:
            allowed = mask[:, :, i0:i1, k0:i1]
        else:
            qi = torch.arange(i0, i1, device=query.device)[:, None]
            ki = torch.arange(k0, i1, device=query.device)[None, :]
            allowed = ki <= qi
            if window is not None:
                allowed = allowed & (ki > qi - window)
        qb = query[:, :, i0:i1]
        if softcap is None:
            out[:, :, i0:i1] = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed,
                                                              scale=scaling)
        else:
            s = torch.matmul(qb, kb.transpose(2, 3)) * scaling
            s = torch.tanh(s / softcap) * softcap
            s = s.masked_fill(~allowed, float("-inf"))
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(query.dtype)
            out[:, :, i0:i1] = torch.matmul(p, vb)
    return out


def attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | BandMask | None, dropout: float = 0.0,
    scaling: float | None = None, softcap: float | None = None, **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface of :data:`ATTENTION` (same contract as
    ``integrations.sdpa_attention.sdpa_attention_forward``: ``query[b, h, t, d]``, ``key`` /
    ``value[b, h_kv, t, d]`` -> ``([b, t, h, d], None)``).

    Plain causal attention without soft-capping is ``sdpa_attention_forward`` itself; a
    :class:`BandMask` or ``softcap`` goes through :func:`blocked_attention`. The window comes
    from the mask transformers built for the layer, not from the module's ``sliding_window``.

    Raises:
        PruneError for dropout in training mode (pruning runs the model in eval mode).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout and module.training:
        raise PruneError(f"{type(module).__name__} runs attention dropout {dropout}: the model "
                         "is in training mode; ssgr runs it in eval mode")
    band = isinstance(attention_mask, BandMask)
    if not band and softcap is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                      scaling=scaling, **kwargs)
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    tensor_mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
    if tensor_mask is not None and tensor_mask.dtype != torch.bool:
        tensor_mask = tensor_mask == 0  # additive float mask: 0 = attend
    out = blocked_attention(query, key, value, scaling,
                            window=attention_mask.window if band else None,
                            softcap=softcap, mask=tensor_mask)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register :func:`attention` and :func:`band_mask` with transformers under
    :data:`ATTENTION` (idempotent; called when the engine builds its skeleton, not at import).
    Returns the name to pass as ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, band_mask)
    return ATTENTION


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
    tensor dimension of size ``full`` after the first (or of a 1-d tensor) is narrowed to ``t``;
    a :class:`BandMask` wider than ``t`` becomes None (plain causal)."""
    def sl(v):
        if isinstance(v, torch.Tensor):
            for dim, size in enumerate(v.shape):
                if size == full and dim > 0 or (size == full and v.dim() == 1):
                    return v.narrow(dim, 0, t)
            return v
        if isinstance(v, tuple):
            return tuple(sl(x) for x in v)
        if isinstance(v, BandMask) and v.window >= t:
            return None
        return v
    return {k: sl(v) for k, v in kw.items()}


class LayerKwargs:
    """The decoder layers' keyword arguments per sequence length and layer, kept on ``home``
    (the device when the activation store is there, else CPU) and moved to ``device`` on use.

    Layers whose arguments are the same objects (every layer of a Llama; the layers of one
    attention type of a Gemma) share one entry. :attr:`layer` selects the layer whose arguments
    :meth:`__call__` returns; the engine sets it before each layer.
    """

    def __init__(self, seqs: list[CalibSequence], device: torch.device) -> None:
        self.seqs = seqs
        self.device = device
        #: length -> the distinct keyword-argument dicts of that length.
        self.by_len: dict[int, list[dict[str, Any]]] = {}
        #: length -> per decoder layer, its index into ``by_len[length]``.
        self.which: dict[int, list[int]] = {}
        #: The decoder layer whose arguments :meth:`__call__` returns.
        self.layer = 0

    def __call__(self, i: int) -> dict[str, Any]:
        """The keyword arguments of sequence ``i`` for layer :attr:`layer`, on the device."""
        t = self.seqs[i].tokens
        return to_device(self.by_len[t][self.which[t][self.layer]], self.device)

    def add(self, t: int, per_layer: list[dict[str, Any]], home: torch.device) -> None:
        """Record the arguments every layer received for a sequence of ``t`` tokens."""
        if t in self.by_len:
            return
        uniq: list[dict[str, Any]] = []
        which: list[int] = []
        for kw in per_layer:
            for j, u in enumerate(uniq):
                if u.keys() == kw.keys() and all(u[k] is kw[k] for k in kw):
                    which.append(j)
                    break
            else:
                uniq.append(kw)
                which.append(len(uniq) - 1)
        self.by_len[t] = [to_device(u, home) for u in uniq]
        self.which[t] = which


def _check_kwargs(kw: dict[str, Any], li: int, prefix: str, model: nn.Module) -> None:
    mask = kw.get("attention_mask")
    if isinstance(mask, dict):
        mask = None  # a per-type mapping handed on as is: the layer picks its own entry
    if mask is not None and not isinstance(mask, BandMask):
        impl = getattr(model.config, "_attn_implementation", None)
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PruneError(
            f"layer {li} ({prefix}.{li}): {type(model).__name__} passes an explicit {shape} "
            f"attention mask to its decoder layers for an unpadded sequence (attention "
            f"implementation {impl!r}): its mask is not causal or sliding-window causal (e.g. "
            "a bidirectional overlay), or the family builds masks in its own attention code; "
            "ssgr runs attention without a materialised t x t mask, so this model is not "
            "supported (prune it with llm-compressor's oneshot, or a family listed in the "
            "README's compatibility table)")
    if kw.get("past_key_values") is not None:
        raise PruneError(f"{type(model).__name__} passes a KV cache to its layers with "
                         "use_cache=False; it is not supported")


@torch.no_grad()
def capture(
    model: nn.Module, layer0: nn.Module, seqs: list[CalibSequence], store: ActivationStore,
    device: torch.device, dtype: torch.dtype, keep_hidden: bool, progress: bool = True,
) -> LayerKwargs:
    """Run every sequence through the embeddings; returns every layer's keyword arguments.

    Args:
        model: the causal LM (embeddings loaded; decoder layers may still be on meta).
        layer0: its first decoder layer.
        seqs: the calibration sequences (``input_ids[1, t]`` int64).
        store: when ``keep_hidden``, sequence i's layer-0 input ``x[1, t, d]`` (``dtype``) is put
            in its slot ``"in"``.
        device: the compute device.
        dtype: the activation dtype.
        keep_hidden: False on ``--resume`` (the inputs come from the checkpoint).
        progress: show the progress bar (False on torchrun ranks other than 0).
    Raises:
        PruneError when the forward never reaches layer 0 or skips a layer, or passes a KV cache
        or an explicit attention mask (other than causal / sliding-window causal) to a layer.
    """
    prefix, layers = find_decoder_layers(model)
    if layers[0] is not layer0:
        raise PruneError(f"the first decoder layer is {prefix}.0, not the layer passed")
    n = len(layers)
    box: dict = {}

    def recorder(li: int, sig: inspect.Signature):
        def fwd(*args, **kwargs):
            try:  # positional arguments by name (GPT-2 passes the mask positionally)
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise PruneError(f"{prefix}.{li} is called with arguments its forward does not "
                                 f"take ({exc}); the model is not supported") from None
            named: dict[str, Any] = {}
            for k, v in bound.arguments.items():
                if sig.parameters[k].kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(v)
                elif sig.parameters[k].kind is inspect.Parameter.VAR_POSITIONAL:
                    if v:
                        raise PruneError(f"{prefix}.{li} takes extra positional arguments; "
                                         "the model is not supported")
                else:
                    named[k] = v
            first = next(iter(sig.parameters))
            x = named.pop(first)
            if li == 0:
                box["x"] = x
            box.setdefault("kw", {})[li] = named
            if li == n - 1:
                raise _Stop
            return x
        return fwd

    kwargs = LayerKwargs(seqs, device)
    kw_dev = device if store.kind == "device" else torch.device("cpu")
    for li, layer in enumerate(layers):
        layer.forward = recorder(li, inspect.signature(layer.forward))
    try:
        for i, s in enumerate(tqdm(seqs, desc="capture layer-0 inputs", unit="seq", leave=False,
                                          disable=not progress)):
            box.clear()
            try:
                model(input_ids=s.input_ids, use_cache=False)
            except _Stop:
                pass
            got = box.get("kw", {})
            if "x" not in box:
                raise PruneError("the model's forward never reached its first decoder layer")
            if len(got) != n:
                raise PruneError(f"the model's forward ran {len(got)} of its {n} decoder layers "
                                 f"({prefix}); it is not supported")
            for li in range(n):
                _check_kwargs(got[li], li, prefix, model)
            kwargs.add(s.tokens, [got[li] for li in range(n)], kw_dev)
            if keep_hidden:
                store.put("in", i, box["x"].to(dtype))
    finally:
        for layer in layers:
            del layer.forward
    return kwargs
