"""Layer plumbing shared by the compat wrappers: which layers are prunable, their weight as a 2-D
``W[rows, columns]`` matrix (output x input features), and a layer input as ``X[tokens, columns]``.

Conventions follow llm-compressor 0.14 (``accumulate_hessian`` / ``sparsify_weight``) and
IST-DASLab sparsegpt:

- ``nn.Linear``: ``W = weight`` ``[out, in]``; inputs ``[..., in]``.
- ``transformers.Conv1D`` (GPT-2 style, weight stored ``[in, out]``): ``W = weight.T``.
- ``nn.Conv2d`` (``groups=1``): ``W = weight.flatten(1)`` ``[out, in*kh*kw]``; inputs
  ``[B, C, H, W]`` are unfolded (``nn.Unfold`` with the layer's kernel/dilation/padding/stride)
  into one row per output position.

The number of *samples* of a batch is its leading dimension (a 2-D input is one sample), exactly
as both upstream projects count it; the number of *tokens* is the number of rows of ``X``.
transformers is never imported here: a ``Conv1D`` can only exist once transformers is loaded.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

LINEAR, CONV1D, CONV2D = "linear", "conv1d", "conv2d"


def _conv1d_type() -> type | None:
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def layer_kind(layer: object, who: str) -> str:
    """``"linear"``, ``"conv1d"`` or ``"conv2d"``; a ValueError naming ``who`` otherwise."""
    conv1d = _conv1d_type()
    if conv1d is not None and isinstance(layer, conv1d):
        return CONV1D
    if isinstance(layer, nn.Linear):
        return LINEAR
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(
                f"{who}: nn.Conv2d with groups={layer.groups} is not supported (its unfolded input "
                "does not match the weight's columns); prune only groups=1 convolutions"
            )
        return CONV2D
    raise ValueError(
        f"{who}: unsupported layer type {type(layer).__name__}; supported are torch.nn.Linear, "
        "transformers Conv1D and torch.nn.Conv2d (wrap the module's Linear sub-layers instead)"
    )


def weight_2d(layer: nn.Module, kind: str) -> torch.Tensor:
    """The layer's weight as a contiguous ``W[rows, columns]`` in the weight's dtype (a view
    where the layout allows, a copy for Conv1D).

    Contiguous so that every backend of ``sparsegpt_prune`` starts from the same row-major layout
    (each one also accepts a strided W: it copies it to row-major fp32 first).
    """
    w = layer.weight.detach()
    if kind == CONV1D:
        w = w.t()
    elif kind == CONV2D:
        w = w.flatten(1)
    return w.contiguous()


def weight_from_2d(layer: nn.Module, kind: str, W: torch.Tensor) -> torch.Tensor:
    """``W[rows, columns]`` back in the layer's weight layout, shape and dtype (a new tensor)."""
    if kind == CONV1D:
        W = W.t()
    return W.reshape(layer.weight.shape).to(layer.weight.dtype).contiguous()


def write_weight_2d(layer: nn.Module, kind: str, W: torch.Tensor) -> None:
    """Copy ``W[rows, columns]`` into ``layer.weight`` in place (its dtype and device kept)."""
    with torch.no_grad():
        layer.weight.copy_(weight_from_2d(layer, kind, W))


def inputs_2d(layer: nn.Module, kind: str, inp: torch.Tensor, columns: int,
              who: str) -> tuple[torch.Tensor, int]:
    """A layer input as ``(X[tokens, columns], samples)``.

    Args:
        inp: Linear/Conv1D: ``[..., in]`` (2-D is one sample, else ``inp.shape[0]`` samples);
            Conv2d: ``[B, C, H, W]`` or unbatched ``[C, H, W]``.
        columns: the layer's input features (``W.shape[1]``), checked against ``X``.
    """
    if not isinstance(inp, torch.Tensor):
        raise ValueError(f"{who}: add_batch expects the layer input as a tensor, got "
                         f"{type(inp).__name__} (a forward hook's inp[0])")
    inp = inp.detach()
    if kind == CONV2D:
        if inp.dim() == 3:
            inp = inp.unsqueeze(0)
        if inp.dim() != 4:
            raise ValueError(f"{who}: a Conv2d input must be [B, C, H, W], got {tuple(inp.shape)}")
        unfold = nn.Unfold(layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                           stride=layer.stride)
        cols = unfold(inp)  # [B, C*kh*kw, L]
        samples = inp.shape[0]
        X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        if inp.dim() == 0:
            raise ValueError(f"{who}: the layer input is a scalar; pass the activations [..., in]")
        samples = 1 if inp.dim() <= 2 else inp.shape[0]
        X = inp.reshape(-1, inp.shape[-1])
    if X.shape[1] != columns:
        raise ValueError(
            f"{who}: the input has {X.shape[1]} features per token (shape {tuple(inp.shape)}) but "
            f"the layer has {columns} input columns; pass this layer's own input (inp[0] of a "
            "forward hook on it)"
        )
    return X, samples


def under_calibrated(tokens: int, diag: torch.Tensor | None, min_tokens: int = 1) -> str | None:
    """Why a layer's statistics are too poor to prune by (the ``--min-tokens`` policy of
    ``ssgr prune``, shared by the drop-ins), or None: fewer than ``min_tokens`` input rows
    (tokens), or every input column exactly zero on every token (``diag``: the Hessian's
    diagonal or the column squared norms ``[columns]``; an all-zero Hessian makes SparseGPT zero
    the whole weight)."""
    if tokens < max(min_tokens, 1):
        return f"{tokens} calibration token(s) reached it, fewer than {max(min_tokens, 1)}"
    if diag is not None and diag.numel() and not bool((diag != 0).any()):
        return (f"all {diag.numel()} of its inputs were exactly zero on its {tokens} calibration "
                "token(s) (dead inputs)")
    return None


def magnitude_keep(W: torch.Tensor, sparsity: float, n_kept: int, m: int,
                   backend: str | None = None) -> torch.Tensor:
    """Keep mask ``[rows, columns]`` (bool) of magnitude pruning at the requested pattern: the
    largest ``|W|`` per row (``sparsity`` of each row pruned) when ``m == 0``, else ``n_kept`` of
    every ``m`` along the input dimension (the fallback of :func:`under_calibrated` layers)."""
    from ssgr.ops import nm_mask, topk_mask

    scores = W.detach().abs().float()
    if m:
        return nm_mask(scores, n_kept, m, backend=backend)
    return topk_mask(scores, sparsity, per="row", backend=backend)
