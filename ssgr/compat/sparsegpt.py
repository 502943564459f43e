"""Drop-in replacement for IST-DASLab's ``sparsegpt.SparseGPT`` (also wanda's ``lib/sparsegpt.py``)
running on ssgr kernels.

Switch by changing the import::

    from ssgr.compat.sparsegpt import SparseGPT   # was: from sparsegpt import SparseGPT

Interface (same as upstream):

- ``SparseGPT(layer)`` for ``nn.Linear``, ``transformers.Conv1D`` and ``nn.Conv2d`` (groups=1).
- ``add_batch(inp, out, blocksize=1024)``: ``inp`` is the layer input (``inp[0]`` of a forward
  hook), ``[..., in]`` for Linear/Conv1D (a 2-D input is one sample, otherwise ``inp.shape[0]``
  samples), ``[B, C, H, W]`` for Conv2d (unfolded like llm-compressor's ``accumulate_hessian``;
  upstream IST code does not unfold). ``out`` and ``blocksize`` are unused, as upstream.
- ``fasterprune(sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01)``: ``prunen`` /
  ``prunem`` are IST's meaning, *prune* ``prunen`` of every ``prunem`` (2:4 prunes 2 of 4); wanda's
  spelling ``prune_n`` / ``prune_m`` is accepted too. With ``prunen == 0`` the pruning is
  unstructured at ``sparsity`` (chosen per block of ``blocksize`` columns); with N:M ``sparsity`` is
  ignored, as upstream. The layer's weight is overwritten in place in its dtype.
- ``free()`` releases the Hessian; attributes ``layer``, ``dev``, ``rows``, ``columns``, ``H``,
  ``nsamples``.
- ``quantizer`` (optional, IST's ``--wbits`` drivers): with ``gpt.quantizer`` set to a configured
  IST ``quant.Quantizer`` (or :class:`ssgr.compat.quant.Quantizer`) before ``fasterprune``, every
  kept weight is put on the quantizer's grid inside the column loop, as upstream: the grid is
  fitted per row from the fp32 weight unless the quantizer is already ``ready()``, each column is
  pruned, quantized, and its error compensated in the later columns. This joint path is the slow
  one (a torch step per column on the layer's device, ``_obs_quantized``): no ssgr kernel
  quantizes, so it is taken only when a quantizer is attached; a forced backend other than
  ``reference`` is refused, and so is an unconfigured quantizer (upstream would write NaN).
  ``quantizer = None`` means none. Unstructured ``sparsity=0`` with a quantizer prunes nothing
  (quantize only; upstream also prunes each block's smallest weight).

``H`` and ``nsamples`` keep IST's semantics: ``nsamples`` counts samples (sequences), and after
any number of batches ``H = 2 / nsamples * sum X^T X`` (fp32, ``[columns, columns]``, on the
layer's device). Each batch's ``X^T X`` is computed in fp32 with
:func:`ssgr.ops.hessian_accumulate` (no scaled copy of the input) and added to a float64 raw sum
``sum X^T X`` (a second ``[columns, columns]`` buffer, 8 bytes per entry); ``H`` is then rewritten
in place as ``2 / nsamples`` times that sum, so it carries one fp32 rounding, none accumulated
over batches. IST's running average (``H *= n / (n + b)``, then ``H += (sqrt(2 / n) X)^T
(sqrt(2 / n) X)``) rounds H twice per batch; rescaling the running fp32 H per batch, as this class
did before, had twice IST's error on SmolLM2-135M's layer-0 ``down_proj`` (README, "SparseGPT
numerics on real activations"). An H the caller replaced or edited in place between batches is
honoured (the raw sum restarts from it, as IST's running average would). ``tokens`` additionally
counts rows of X.

Differences from upstream, by design: nothing is printed (the time and loss go to ``logging`` at
INFO and are returned as a :class:`ssgr.ops.SparseGPTResult`); a failing Cholesky is retried
with 10x damping (IST raises); bad input raises a ValueError naming the layer; after
``fasterprune`` the Hessian is released (``H`` becomes None; upstream deletes the attribute).
Importing this module has no side effects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from ssgr.errors import InputError
from ssgr.ops import SparseGPTResult, hessian_accumulate, sparsegpt_prune
from ssgr.ops.sparsegpt._common import prepare
from ssgr.ops.sparsegpt.reference import damped_inverse_factor, sparsegpt_blocks

from ._layers import inputs_2d, layer_kind, weight_2d, write_weight_2d
from .quant import quantize

log = logging.getLogger(__name__)

__all__ = ["SparseGPT"]


def _nm_args(prunen: object, prunem: object, prune_n: object, prune_m: object,
             who: str) -> tuple[int, int]:
    """Merge IST's ``prunen/prunem`` and wanda's ``prune_n/prune_m`` spellings."""
    if prune_n is not None:
        if prunen not in (0, prune_n):
            raise ValueError(f"{who}: give prunen= or prune_n=, not both (got {prunen}, {prune_n})")
        prunen = prune_n
    if prune_m is not None:
        if prunem not in (0, prune_m):
            raise ValueError(f"{who}: give prunem= or prune_m=, not both (got {prunem}, {prune_m})")
        prunem = prune_m
    for nm, v in (("prunen", prunen), ("prunem", prunem)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{who}: {nm} must be a non-negative int, got {v!r}")
    return prunen, prunem


def _obs_quantized(
    W: torch.Tensor, H: torch.Tensor, grid: Callable[[torch.Tensor], torch.Tensor], *,
    sparsity: float, n_prune: int, m: int, blocksize: int, percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """SparseGPT's blocked OBS loop with every kept weight put on a quantization grid (SparseGPT
    paper, Frantar & Alistarh 2023, section 3.5 "joint sparsification and quantization"; IST's
    ``fasterprune`` with a quantizer). The slow path: the reference backend's column loop
    (:func:`ssgr.ops.sparsegpt.reference.sparsegpt_blocks` with ``grid``), taken only when a
    quantizer is attached (no ssgr kernel quantizes).

    Args:
        W: ``[r, c]`` float32 weights (not modified).
        H: ``[c, c]`` float32 Hessian, IST-scaled (not modified).
        grid: maps a column ``q[r, 1]`` (pruned entries already 0) to its grid values.
        sparsity: unstructured fraction pruned per block (``n_prune == 0``); a block whose share
            ``int(numel * sparsity)`` is 0 prunes nothing (so 0 only quantizes).
        n_prune, m: N:M, prune ``n_prune`` of every ``m`` (chosen from the updated weights).
        blocksize: columns per OBS block. percdamp: damping fraction (> 0), retried x10.
    Returns:
        ``(Q[r, c] float32, keep[r, c] bool, loss, damping)``: ``loss`` is IST's
        ``sum (w - q)^2 / U_ii^2 / 2``.
    Raises:
        CholeskyError: H stays non positive-definite after every damping retry.
    """
    Wc, Hc = prepare(W, H, torch.float32)
    U, damping = damped_inverse_factor(Hc, percdamp)
    Q, keep, loss = sparsegpt_blocks(Wc, U, sparsity=sparsity, n_prune=n_prune, m=m,
                                     blocksize=blocksize, grid=grid)
    return Q, keep, loss, damping


class SparseGPT:
    """IST-DASLab ``SparseGPT`` on ssgr ops: Hessian of one layer's input, then blocked OBS.

    Args:
        layer: ``nn.Linear``, ``transformers.Conv1D`` or ``nn.Conv2d`` (groups=1).
        name: the layer's name for messages (optional; upstream has no such argument).
        backend: force an ssgr backend for both ops (see ``ssgr info``); None dispatches.
    """

    def __init__(self, layer: nn.Module, *, name: str = "", backend: str | None = None) -> None:
        self.name = name or type(layer).__name__
        self._kind = layer_kind(layer, f"SparseGPT({self.name})")
        self.layer = layer
        self.dev = layer.weight.device
        self.backend = backend
        W = weight_2d(layer, self._kind)
        self.rows, self.columns = int(W.shape[0]), int(W.shape[1])
        self.H: torch.Tensor | None = torch.zeros(
            (self.columns, self.columns), device=self.dev, dtype=torch.float32
        )
        self.nsamples = 0
        self.tokens = 0
        # sum X^T X in float64 (allocated by the first batch), and the H it last wrote (the
        # tensor and its in-place version counter), to notice an H the caller replaced or edited
        self._sum: torch.Tensor | None = None
        self._written: tuple[torch.Tensor, int] | None = None

    def __repr__(self) -> str:
        return (f"SparseGPT({self.name}: rows={self.rows}, columns={self.columns}, "
                f"nsamples={self.nsamples}, tokens={self.tokens})")

    def _released(self) -> ValueError:
        return ValueError(
            f"SparseGPT({self.name}): the Hessian was released by fasterprune() or free(); create "
            "a new SparseGPT(layer) and call add_batch again to calibrate this layer anew"
        )

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor | None = None,
                  blocksize: int = 1024) -> None:
        """Add one batch of the layer's input to ``H`` (IST semantics, see the module docstring).

        Args:
            inp: Linear/Conv1D ``[..., columns]``; Conv2d ``[B, C, H, W]``.
            out: the layer output; unused (kept for the upstream hook signature).
            blocksize: unused (upstream signature).
        """
        if self.H is None:
            raise self._released()
        X, samples = inputs_2d(self.layer, self._kind, inp, self.columns,
                               f"SparseGPT({self.name}).add_batch")
        if X.shape[0] == 0:
            return
        total = self.nsamples + samples
        if not self._sum_matches_H():
            # first batch, or the caller set H: the raw sum restarts from H = 2/n * S
            self._sum = self.H.detach().to(torch.float64) * (self.nsamples / 2)
        # this batch's X^T X in fp32 (in H's storage, rewritten below), added to the fp64 sum,
        # then H = 2/n * S in place: one rounding of H, none accumulated over batches
        self.H.zero_()
        hessian_accumulate(self.H, X.to(self.H.device), backend=self.backend)
        self._sum.add_(self.H)
        torch.mul(self._sum, 2 / total, out=self.H)
        self._written = (self.H, self.H._version)
        self.nsamples = total
        self.tokens += int(X.shape[0])

    def _sum_matches_H(self) -> bool:
        """True when ``H`` is still the tensor the last batch wrote from the raw sum, unedited
        (same object, same in-place version counter)."""
        if self._sum is None or self._written is None:
            return False
        H, version = self._written
        return self.H is H and H._version == version

    def fasterprune(
        self,
        sparsity: float,
        prunen: int = 0,
        prunem: int = 0,
        blocksize: int = 128,
        percdamp: float = 0.01,
        *,
        prune_n: int | None = None,
        prune_m: int | None = None,
    ) -> SparseGPTResult:
        """Prune and compensate the layer's weight in place (IST ``fasterprune``).

        Args:
            sparsity: unstructured fraction removed, in [0, 1) (ignored for N:M).
            prunen, prunem: prune ``prunen`` of every ``prunem`` consecutive inputs (0 = off).
            blocksize: columns per OBS block (a multiple of ``prunem``).
            percdamp: damping as a fraction of ``mean(diag H)``.
            prune_n, prune_m: wanda's spelling of ``prunen``, ``prunem``.
        Returns:
            :class:`ssgr.ops.SparseGPTResult` ``(weight [rows, columns], mask [rows, columns]
            (True = kept), loss, damping)``.
        """
        who = f"SparseGPT({self.name}).fasterprune"
        if self.H is None:
            raise self._released()
        if self.nsamples == 0:
            raise ValueError(
                f"{who}: no calibration input was added; call add_batch(inp, out) (e.g. from a "
                "forward hook on the layer while running the calibration data) before fasterprune"
            )
        prunen, prunem = _nm_args(prunen, prunem, prune_n, prune_m, who)
        if prunen != 0:
            if not prunen < prunem:
                raise ValueError(f"{who}: N:M pruning needs prunen < prunem (prune prunen of every "
                                 f"prunem), got prunen={prunen}, prunem={prunem}")
            if self.columns % prunem != 0:
                raise ValueError(
                    f"{who}: prunem={prunem} does not divide the layer's {self.columns} input "
                    "columns; choose an M that divides it or prune this layer unstructured"
                )
            kw: dict = dict(n=prunem - prunen, m=prunem)
            pattern = f"{prunen}:{prunem} (prune)"
        else:
            kw = dict(sparsity=sparsity)
            pattern = f"{sparsity} unstructured"
        W = weight_2d(self.layer, self._kind)
        quantizer = getattr(self, "quantizer", None)
        tick = time.perf_counter()
        try:
            if quantizer is None:
                res = sparsegpt_prune(W, self.H, blocksize=blocksize, percdamp=percdamp,
                                      backend=self.backend, **kw)
            else:
                res = self._prune_quantized(quantizer, W, blocksize, percdamp, sparsity,
                                            prunen, prunem, who)
                pattern += f" + {int(quantizer.maxq).bit_length()}-bit grid"
        except ValueError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(who) else f"{who}: {msg}") from None
        write_weight_2d(self.layer, self._kind, res.weight)
        self.free()
        log.info("%s: pruned %s in %.2fs, loss %.4g, damping %g", self.name, pattern,
                 time.perf_counter() - tick, res.loss, res.damping)
        return res

    def _prune_quantized(self, quantizer: object, W: torch.Tensor, blocksize: int,
                         percdamp: float, sparsity: float, prunen: int, prunem: int,
                         who: str) -> SparseGPTResult:
        """The joint sparsify + quantize path (IST ``fasterprune`` with ``self.quantizer``).

        Checks the quantizer, finds its per-row grid from the fp32 weight when it is not
        ready (as upstream: before dead columns are zeroed), and runs :func:`_obs_quantized`.
        """
        if self.backend not in (None, "reference"):
            raise InputError(
                f"backend={self.backend!r} cannot quantize: with a quantizer attached the joint "
                "sparsify + quantize loop runs in torch (the reference path); pass backend=None "
                "or 'reference', or set self.quantizer = None"
            )
        for attr in ("maxq", "scale", "zero", "ready", "find_params"):
            if not hasattr(quantizer, attr):
                raise InputError(
                    f"self.quantizer ({type(quantizer).__name__}) has no '{attr}'; attach IST's "
                    "quant.Quantizer or ssgr.compat.quant.Quantizer, configured with "
                    "configure(bits, perchannel=..., sym=..., mse=...), or set it to None"
                )
        maxq = int(quantizer.maxq)
        if maxq <= 0:
            raise InputError(
                "self.quantizer is not configured (maxq = 0); call "
                "quantizer.configure(bits, perchannel=..., sym=..., mse=...) before fasterprune"
            )
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
            raise InputError(f"blocksize must be a positive int, got {blocksize!r}")
        if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
            raise InputError(
                f"percdamp must be a float > 0 (0.01 is the usual value), got {percdamp!r}"
            )
        if prunen:
            if blocksize % prunem != 0:
                raise InputError(f"blocksize={blocksize} is not a multiple of m={prunem}: N:M "
                                 "groups would straddle OBS blocks")
        elif isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
                0.0 <= sparsity < 1.0):
            raise InputError(f"sparsity must be in [0, 1) (fraction of weights removed), "
                             f"got {sparsity!r}")
        Wf = W.to(self.dev, torch.float32, copy=True)
        if not quantizer.ready():
            quantizer.find_params(Wf, weight=True)
        scale, zero = (torch.as_tensor(t, dtype=torch.float32, device=self.dev)
                       for t in (quantizer.scale, quantizer.zero))
        if scale.numel() not in (1, self.rows) or zero.numel() != scale.numel():
            raise InputError(
                f"self.quantizer has scale of shape {tuple(scale.shape)} and zero of shape "
                f"{tuple(zero.shape)}; a weight grid needs one per output row ({self.rows}) or "
                "one for the tensor: call quantizer.find_params(W, weight=True) on this layer's "
                "weight (or leave it unfitted so fasterprune fits it)"
            )
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
        log.info("%s: quantizer attached: joint sparsify + %d-level quantize on the slow torch "
                 "path", self.name, maxq + 1)
        Q, keep, loss, damping = _obs_quantized(
            Wf, self.H, lambda q: quantize(q, scale, zero, maxq), sparsity=float(sparsity),
            n_prune=prunen, m=prunem, blocksize=blocksize, percdamp=float(percdamp),
        )
        return SparseGPTResult(Q.to(W.dtype), keep, loss, damping)

    def free(self) -> None:
        """Release the Hessian and its raw sum (upstream's ``free``)."""
        self.H = None
        self._sum = None
        self._written = None
