"""Drop-in pieces of the Wanda repository (locuslab/wanda ``lib/layerwrapper.py`` and the mask
selection inside ``lib/prune.py: prune_wanda``) running on ssgr kernels.

Switch by changing the import and the mask selection::

    from ssgr.compat.wanda import WrappedGPT, wanda_mask  # was: from .layerwrapper import ...
    W_mask = wanda_mask(W_metric, args.sparsity_ratio, prune_n, prune_m)  # replaces the if/else
    subset[name].weight.data[W_mask] = 0

or let :func:`prune_wrapped` do metric, mask and zeroing for one wrapped layer.

``WrappedGPT(layer, layer_id=0, layer_name="none")`` keeps wanda's attributes (``layer``, ``dev``,
``rows``, ``columns``, ``nsamples``, ``layer_id``, ``layer_name``, ``scaler_row``) with wanda's
meaning. ``scaler_row`` is a plain fp32 tensor ``[columns]`` (zeros at first), as upstream: each
``add_batch`` updates it in place with wanda's running average ``scaler_row *= n_old / n_new;
scaler_row += ||x_col||^2 / n_new`` (samples = sequences; a 2-D input is one sample), computed with
the same torch ops, so it is bit-identical to wanda's; it can be edited in place or reassigned,
and the next ``add_batch`` and :meth:`WrappedGPT.metric` use what is there. ``tokens`` counts rows
of input. ``transformers.Conv1D`` and ``nn.Conv2d`` (unfolded input) are accepted too; upstream
handles ``nn.Linear`` only.

``prune_n`` / ``prune_m`` keep wanda's meaning: *prune* ``prune_n`` of every ``prune_m``
(``"2:4"``); ``prune_n == 0`` is per-row unstructured pruning of ``int(columns * sparsity_ratio)``
weights with wanda's stable sort order. Masks are wanda's: True = pruned. :func:`wanda_mask`
has no ``--use_variant`` (alpha search): a driver that needs it switches the import only and
keeps its own mask block, which reads the bit-identical ``scaler_row``. Importing this module
has no side effects.
"""

from __future__ import annotations

import torch
from torch import nn

from ssgr.errors import InputError
from ssgr.ops import nm_mask, topk_mask, wanda_scores

from ._layers import inputs_2d, layer_kind, weight_2d, write_weight_2d

__all__ = ["WrappedGPT", "prune_wrapped", "wanda_mask"]


class WrappedGPT:
    """Wanda's ``WrappedGPT``: per-column input statistics of one layer.

    Args:
        layer: ``nn.Linear`` (also ``transformers.Conv1D``, ``nn.Conv2d`` with groups=1).
        layer_id, layer_name: kept for wanda's bookkeeping and used in messages.
        backend: force an ssgr backend for the mask ops (see ``ssgr info``).
    """

    def __init__(self, layer: nn.Module, layer_id: int = 0, layer_name: str = "none", *,
                 backend: str | None = None) -> None:
        self.layer_id = layer_id
        self.layer_name = layer_name
        who = f"WrappedGPT({layer_name})"
        self._kind = layer_kind(layer, who)
        self.layer = layer
        self.dev = layer.weight.device
        self.backend = backend
        W = weight_2d(layer, self._kind)
        self.rows, self.columns = int(W.shape[0]), int(W.shape[1])
        self.scaler_row = torch.zeros(self.columns, device=self.dev)
        self.nsamples = 0
        self.tokens = 0

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Add one batch of the layer's input (Linear ``[..., columns]``, Conv2d
        ``[B, C, H, W]``) to ``scaler_row`` in place (wanda's running average; see the module
        docstring); ``out`` is unused (wanda's hook signature).

        Raises:
            InputError: the input does not match the layer, or ``scaler_row`` was replaced by
                something that is not a float tensor of shape ``[columns]``.
        """
        who = f"WrappedGPT({self.layer_name}).add_batch"
        X, samples = inputs_2d(self.layer, self._kind, inp, self.columns, who)
        row = self.scaler_row
        if not (isinstance(row, torch.Tensor) and row.is_floating_point()
                and tuple(row.shape) == (self.columns,)):
            raise InputError(
                f"{who}: scaler_row must be a float tensor of shape [{self.columns}], got "
                f"{type(row).__name__} {tuple(getattr(row, 'shape', ()))}"
            )
        if samples == 0:
            return
        total = self.nsamples + samples
        row *= self.nsamples / total
        self.nsamples = total
        X = X.to(row.device).type(torch.float32)
        row += torch.linalg.vector_norm(X, ord=2, dim=0) ** 2 / self.nsamples
        self.tokens += int(X.shape[0])

    def metric(self) -> torch.Tensor:
        """Wanda's ``W_metric[rows, columns] = |W| * sqrt(scaler_row)`` (fp32), from the
        current ``scaler_row`` (edits and reassignments included).

        Raises:
            ValueError: no batch was added; InputError: ``scaler_row`` has the wrong shape,
                device or negative entries.
        """
        if self.nsamples == 0:
            raise ValueError(
                f"WrappedGPT({self.layer_name}): no calibration input was added; call "
                "add_batch(inp, out) from a forward hook on the layer before pruning"
            )
        return wanda_scores(weight_2d(self.layer, self._kind).float(), self.scaler_row,
                            backend=self.backend)


def wanda_mask(
    W_metric: torch.Tensor, sparsity_ratio: float = 0.0, prune_n: int = 0, prune_m: int = 0,
    *, backend: str | None = None,
) -> torch.Tensor:
    """Wanda's mask selection (``prune_wanda`` without ``use_variant``).

    Args:
        W_metric: ``[rows, columns]`` scores (``|W| * sqrt(scaler_row)``).
        sparsity_ratio: unstructured: ``int(columns * sparsity_ratio)`` pruned per row, the
            lowest first, ties in stable sort order (ignored for N:M).
        prune_n, prune_m: prune ``prune_n`` of every ``prune_m`` consecutive columns (0 = off).
    Returns:
        bool ``[rows, columns]``, True where a weight is *pruned* (wanda's ``W_mask``).
    """
    for nm, v in (("prune_n", prune_n), ("prune_m", prune_m)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"wanda_mask: {nm} must be a non-negative int, got {v!r}")
    if prune_n != 0:
        if not prune_n < prune_m:
            raise ValueError(f"wanda_mask: N:M pruning needs prune_n < prune_m (prune prune_n of "
                             f"every prune_m), got prune_n={prune_n}, prune_m={prune_m}")
        if W_metric.dim() == 2 and W_metric.shape[1] % prune_m != 0:
            raise ValueError(
                f"wanda_mask: prune_m={prune_m} does not divide the layer's {W_metric.shape[1]} "
                "input columns; choose an M that divides it or prune this layer unstructured"
            )
        return ~nm_mask(W_metric, prune_m - prune_n, prune_m, backend=backend)
    return ~topk_mask(W_metric, sparsity_ratio, per="row", backend=backend)


def prune_wrapped(
    wrapped: WrappedGPT, sparsity_ratio: float = 0.0, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    """Prune ``wrapped.layer`` in place as ``prune_wanda`` does for one layer.

    Returns:
        bool ``[rows, columns]`` pruned mask (True = pruned), in the 2-D weight layout.
    """
    try:
        mask = wanda_mask(wrapped.metric(), sparsity_ratio, prune_n, prune_m,
                          backend=wrapped.backend)
    except ValueError as exc:
        msg = str(exc)
        if not msg.startswith("WrappedGPT("):
            msg = f"WrappedGPT({wrapped.layer_name}): {msg}"
        raise ValueError(msg) from None
    W = weight_2d(wrapped.layer, wrapped._kind)
    write_weight_2d(wrapped.layer, wrapped._kind, W.masked_fill(mask, 0))
    return mask
