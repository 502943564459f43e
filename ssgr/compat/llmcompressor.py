"""llm-compressor modifiers that run on ssgr kernels: swap the modifier class, keep the recipe.

::

    from ssgr.compat.llmcompressor import SSGRSparseGPTModifier, SSGRWandaPruningModifier
    recipe = SSGRSparseGPTModifier(sparsity=0.5, mask_structure="2:4", ignore=["re:.*lm_head"])
    oneshot(model=model, dataset=ds, recipe=recipe)

For YAML / string recipes call :func:`register_modifiers` once; the recipe can then name
``SSGRSparseGPTModifier`` / ``SSGRWandaPruningModifier``.

Both classes subclass llm-compressor 0.14's ``SparseGPTModifier`` / ``WandaPruningModifier`` and
override only the two hooks that touch tensors, ``calibrate_module`` (statistics of a module's
input) and ``compress_modules`` (the pruning step). Every field, validator, OWL profile, target /
ignore matching, hook registration, sequential pipeline and lifecycle stays llm-compressor's.

What changes, by design:

- SparseGPT's Hessian is the raw sum ``X^T X`` (:func:`ssgr.ops.hessian_accumulate`, fp32),
  llm-compressor keeps ``2/num_samples * X^T X``; a uniform scale changes neither the masks nor
  the weights (damping is relative to ``mean(diag H)``), only fp32 rounding. ``_num_samples``
  still counts samples (sequences) for the logs.
- Pruning goes through :func:`ssgr.ops.sparsegpt_prune` / :func:`ssgr.ops.nm_mask` /
  :func:`ssgr.ops.topk_mask`. ``mask_structure="N:M"`` keeps llm-compressor's meaning: *prune*
  N of every M (``"2:4"``, ``"4:8"``); ssgr is given ``n_kept = M - N``. ``"0:0"`` (or N = 0)
  is unstructured at ``sparsity``.
- A Cholesky failure is retried with 10x the damping (logged; :class:`ssgr.ops.CholeskyError`
  after the last try) instead of llm-compressor's silent fallback to the identity, so
  ``dampening_frac`` must be > 0.
- ``preserve_sparsity_mask=True`` (extend an existing mask) has no ssgr kernel: those modules
  are pruned by llm-compressor's own ``sparsify_weight`` (logged once per modifier).
- Wanda's column statistic is the token sum of ``x^2`` (the stock one is averaged per sample):
  a uniform scale again, the masks are the same.
- Under-calibrated layers (``ssgr prune``'s ``--min-tokens`` policy at its default): a layer
  whose input was exactly zero on every token, or that no token reached (an MoE expert the
  router never chose: its hook never fired), is pruned by magnitude at the requested pattern,
  with one WARNING naming it and its token count, and listed in the modifier's
  ``ssgr_fallbacks``. Stock llm-compressor zeroes the whole weight of the first (SparseGPT) and
  leaves the second dense; the stock Wanda modifier's ssgr drop-in used to abort the run.
"""

from __future__ import annotations

import logging

import torch
from compressed_tensors.utils import (
    align_module_device,
    get_execution_device,
    update_offload_parameter,
)
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight
from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier
from llmcompressor.utils.metric_logging import CompressionLogger
from pydantic import PrivateAttr, field_validator, model_validator

from ssgr.ops import (
    HessianAccumulator,
    hessian_accumulate,
    nm_mask,
    sparsegpt_prune,
    topk_mask,
    wanda_scores,
)

from ._layers import (
    inputs_2d,
    layer_kind,
    magnitude_keep,
    under_calibrated,
    weight_2d,
    weight_from_2d,
)

log = logging.getLogger(__name__)

__all__ = ["SSGRSparseGPTModifier", "SSGRWandaPruningModifier", "register_modifiers"]


def _check_nm(model: SparseGPTModifier | WandaPruningModifier) -> None:
    """Validate ``mask_structure`` (prune N of every M) for the ssgr kernels; parsed here with
    llm-compressor's own ``_split_mask_structure`` (validator order does not matter)."""
    n, m = model._split_mask_structure(model.mask_structure)
    if n != 0 and not 0 < n < m:
        raise ValueError(
            f"{type(model).__name__}: mask_structure={model.mask_structure!r} must be 'N:M' with "
            "0 < N < M (prune N of every M), e.g. '2:4' or '4:8'; '0:0' is unstructured"
        )


def _sparsity(value: object, name: str, cls: str) -> float:
    try:
        return float(value)  # OWL gives numpy floats
    except (TypeError, ValueError):
        raise ValueError(
            f"{cls}: module {name} has sparsity {value!r}; give sparsity as a float in [0, 1) or "
            "a list with one float per target layer"
        ) from None


class _FallbackMixin:
    """The ``--min-tokens`` policy for both modifiers (see the module docstring)."""

    def _fallback(self, module: torch.nn.Module, name: str, kind: str, sparsity: float,
                  tokens: int, reason: str) -> None:
        """Prune ``module`` by magnitude at the modifier's pattern; one WARNING, one record."""
        name = name.rstrip(".")  # llm-compressor names a targeted leaf "layer.leaf."
        n_kept = self._prune_m - self._prune_n if self._prune_n else 0
        m = self._prune_m if self._prune_n else 0
        log.warning("%s: module %s: %s; pruned by magnitude at %s instead (ssgr --min-tokens "
                    "policy)", type(self).__name__, name, reason,
                    f"{n_kept}:{m} kept" if m else f"sparsity {sparsity}")
        with torch.no_grad(), align_module_device(module):
            W = weight_2d(module, kind)
            keep = magnitude_keep(W, sparsity, n_kept, m, backend=self.ssgr_backend)
            new_weight = weight_from_2d(module, kind, W.masked_fill(~keep, 0))
        update_offload_parameter(module, "weight", new_weight)
        self._ssgr_fallbacks.append({"module": name, "tokens": tokens, "method": "magnitude",
                                     "reason": reason})

    @property
    def ssgr_fallbacks(self) -> list[dict]:
        """One record per layer pruned by magnitude under the policy: ``module``, ``tokens``,
        ``method`` ("magnitude"), ``reason``."""
        return list(self._ssgr_fallbacks)

    def _uncalibrated_fallback(self) -> None:
        """Layers registered for calibration whose hook never ran (no token reached them)."""
        for module, name in list(self._module_names.items()):
            if module in self._ssgr_done or module in self._num_samples:
                continue
            sparsity = _sparsity(self._module_sparsities[module], name, type(self).__name__)
            kind = layer_kind(module, name)
            self._fallback(module, name, kind, sparsity, 0, under_calibrated(0, None))
            self._ssgr_done.add(module)

    def on_calibration_end(self, state, event, **kwargs):
        """llm-compressor's calibration end, then the policy for layers no token reached."""
        super().on_calibration_end(state, event, **kwargs)
        self._uncalibrated_fallback()


class SSGRSparseGPTModifier(_FallbackMixin, SparseGPTModifier):
    """llm-compressor's ``SparseGPTModifier`` (same fields) with Hessians and OBS on ssgr ops.

    Fields: ``sparsity``, ``sparsity_profile``, ``mask_structure`` ("N:M" prunes N of M),
    ``owl_m``, ``owl_lmbda``, ``block_size``, ``dampening_frac``, ``preserve_sparsity_mask``,
    ``offload_hessians``, ``targets``, ``ignore`` (see llm-compressor's docs), plus
    ``ssgr_backend``: force an ssgr backend (None dispatches by device; see ``ssgr info``).
    """

    ssgr_backend: str | None = None

    _kinds: dict[torch.nn.Module, str] = PrivateAttr(default_factory=dict)
    _delegation_logged: bool = PrivateAttr(default=False)
    _tokens: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)
    _ssgr_done: set = PrivateAttr(default_factory=set)
    _ssgr_fallbacks: list = PrivateAttr(default_factory=list)

    @field_validator("dampening_frac")
    @classmethod
    def _positive_damping(cls, value: float | None) -> float | None:
        if value is None or not value > 0:
            raise ValueError(
                f"dampening_frac must be > 0 for SSGRSparseGPTModifier (got {value!r}): ssgr "
                "retries a failed Cholesky with more damping instead of using the identity; "
                "use e.g. 0.01"
            )
        return value

    @model_validator(mode="after")
    def _ssgr_pattern(self) -> SSGRSparseGPTModifier:
        _check_nm(self)
        n, m = self._split_mask_structure(self.mask_structure)
        if n != 0 and self.block_size % m != 0:
            raise ValueError(
                f"SSGRSparseGPTModifier: block_size={self.block_size} is not a multiple of M={m} "
                f"from mask_structure={self.mask_structure!r}; N:M groups would straddle OBS "
                f"blocks. Use e.g. block_size={max(m, self.block_size // m * m)}"
            )
        return self

    def calibrate_module(
        self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor
    ) -> None:
        """Forward hook: add ``X^T X`` of the module's input ``args[0]`` to its raw Hessian
        ``[columns, columns]`` (fp32, on the module's execution device)."""
        name = self._module_names.get(module, type(module).__name__)
        if module not in self._num_samples:
            kind = layer_kind(module, name)
            columns = weight_2d(module, kind).shape[1]
            self._kinds[module] = kind
            self._hessians[module] = torch.zeros(
                columns, columns, dtype=torch.float32, device=get_execution_device(module)
            )
            self._num_samples[module] = 0
        kind = self._kinds[module]
        with self._maybe_onload_hessian(module):
            H = self._hessians[module]
            X, samples = inputs_2d(module, kind, args[0], H.shape[0], name)
            hessian_accumulate(H, X.to(H.device), backend=self.ssgr_backend)
        self._num_samples[module] += samples
        self._tokens[module] = self._tokens.get(module, 0) + int(X.shape[0])

    def compress_modules(self) -> None:
        """Prune every calibrated module with :func:`ssgr.ops.sparsegpt_prune`."""
        for module in list(self._num_samples.keys()):
            name = self._module_names[module]
            sparsity = _sparsity(self._module_sparsities[module], name, type(self).__name__)
            kind = self._kinds.pop(module, None) or layer_kind(module, name)
            log.info("Sparsifying %s using %d samples (ssgr)", name, self._num_samples[module])
            with (
                torch.no_grad(),
                align_module_device(module),
                CompressionLogger(module) as comp_logger,
            ):
                reason = None
                if not self.preserve_sparsity_mask:
                    with self._maybe_onload_hessian(module):
                        reason = under_calibrated(self._tokens.get(module, 0),
                                                  self._hessians[module].diagonal())
                if reason is not None:
                    self._hessians.pop(module)
                    loss, new_weight = None, None
                elif self.preserve_sparsity_mask:
                    loss, new_weight = self._stock_prune(module, sparsity)
                else:
                    H = self._hessians.pop(module)
                    W = weight_2d(module, kind)
                    if self._prune_n != 0:
                        kw: dict = dict(n=self._prune_m - self._prune_n, m=self._prune_m)
                    else:
                        kw = dict(sparsity=sparsity)
                    try:
                        res = sparsegpt_prune(
                            W, H.to(W.device), blocksize=self.block_size,
                            percdamp=self.dampening_frac, backend=self.ssgr_backend, **kw,
                        )
                    except ValueError as exc:
                        raise ValueError(f"{type(self).__name__}: module {name}: {exc}") from None
                    del H
                    loss, new_weight = res.loss, weight_from_2d(module, kind, res.weight)
                if loss is not None:
                    comp_logger.set_results(name="SGPT", loss=loss)
            if reason is not None:
                self._fallback(module, name, kind, sparsity, self._tokens.get(module, 0), reason)
            else:
                update_offload_parameter(module, "weight", new_weight)
            self._tokens.pop(module, None)
            self._ssgr_done.add(module)
            del self._num_samples[module]

    def _stock_prune(self, module: torch.nn.Module, sparsity: float) -> tuple[float, torch.Tensor]:
        """``preserve_sparsity_mask=True``: llm-compressor's own ``sparsify_weight``."""
        if not self._delegation_logged:
            log.warning(
                "preserve_sparsity_mask=True has no ssgr kernel; pruning with llm-compressor's "
                "sparsify_weight (set it to False to use ssgr)"
            )
            self._delegation_logged = True
        return sparsify_weight(
            module=module, hessians_dict=self._hessians, sparsity=sparsity,
            prune_n=self._prune_n, prune_m=self._prune_m, block_size=self.block_size,
            dampening_frac=self.dampening_frac, preserve_sparsity_mask=True,
        )


class SSGRWandaPruningModifier(_FallbackMixin, WandaPruningModifier):
    """llm-compressor's ``WandaPruningModifier`` (same fields) with the column statistic and the
    mask selection on ssgr ops: per-row unstructured (``topk_mask(per="row")``, wanda's stable
    sort) or N:M (``nm_mask``, "N:M" prunes N of M). Extra field ``ssgr_backend``."""

    ssgr_backend: str | None = None

    _accumulators: dict[torch.nn.Module, HessianAccumulator] = PrivateAttr(default_factory=dict)
    _kinds: dict[torch.nn.Module, str] = PrivateAttr(default_factory=dict)
    _ssgr_done: set = PrivateAttr(default_factory=set)
    _ssgr_fallbacks: list = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _ssgr_pattern(self) -> SSGRWandaPruningModifier:
        _check_nm(self)
        return self

    def calibrate_module(
        self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor
    ) -> None:
        """Forward hook: add the column squared norms ``[columns]`` of the input ``args[0]``."""
        name = self._module_names.get(module, type(module).__name__)
        if module not in self._num_samples:
            kind = layer_kind(module, name)
            columns = weight_2d(module, kind).shape[1]
            self._kinds[module] = kind
            self._accumulators[module] = HessianAccumulator(
                columns, get_execution_device(module), hessian=False, name=name
            )
            self._num_samples[module] = 0
        acc = self._accumulators[module]
        X, samples = inputs_2d(module, self._kinds[module], args[0], acc.d, name)
        acc.add(X)
        self._num_samples[module] += samples

    def compress_modules(self) -> None:
        """Zero the lowest-scoring weights of every calibrated module (ssgr mask ops)."""
        for module in list(self._num_samples.keys()):
            name = self._module_names[module]
            sparsity = _sparsity(self._module_sparsities[module], name, type(self).__name__)
            kind = self._kinds.pop(module)
            acc = self._accumulators.pop(module)
            log.info("Sparsifying %s using %d samples (ssgr)", name, self._num_samples[module])
            try:
                norms = acc.col_sq_norms() if acc.tokens else None
            except ValueError as exc:
                raise ValueError(f"{type(self).__name__}: module {name}: {exc}") from None
            reason = under_calibrated(acc.tokens, norms)
            if reason is not None:
                self._fallback(module, name, kind, sparsity, acc.tokens, reason)
                self._ssgr_done.add(module)
                del self._num_samples[module]
                continue
            with torch.no_grad(), align_module_device(module), CompressionLogger(module):
                W = weight_2d(module, kind)
                try:
                    norms = acc.col_sq_norms().to(W.device)
                    scores = wanda_scores(W.float(), norms, backend=self.ssgr_backend)
                    if self._prune_n != 0:
                        keep = nm_mask(scores, self._prune_m - self._prune_n, self._prune_m,
                                       backend=self.ssgr_backend)
                    else:
                        keep = topk_mask(scores, sparsity, per="row", backend=self.ssgr_backend)
                except ValueError as exc:
                    raise ValueError(f"{type(self).__name__}: module {name}: {exc}") from None
                new_weight = weight_from_2d(module, kind, W.masked_fill(~keep, 0))
            update_offload_parameter(module, "weight", new_weight)
            self._ssgr_done.add(module)
            del self._num_samples[module]


def register_modifiers() -> None:
    """Make ``SSGRSparseGPTModifier`` / ``SSGRWandaPruningModifier`` nameable in YAML / string
    recipes (llm-compressor's ``ModifierFactory.register``); idempotent. Not done at import."""
    from llmcompressor.modifiers.factory import ModifierFactory

    for cls in (SSGRSparseGPTModifier, SSGRWandaPruningModifier):
        ModifierFactory.register(cls.__name__, cls)
