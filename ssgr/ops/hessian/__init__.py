"""Hessian accumulation: ``H[d, d] += X^T X`` in fp32 for activations ``X[..., d]``.

``HessianAccumulator`` is what a forward hook feeds: any number of ``add(X)`` calls with chunks of
any token count (a 32k-token trace is one call), token counting, Wanda's column squared norms, and
token-averaged results. Scale note: ssgr averages over *tokens* (llm-compressor scales by
2/num_sequences); a uniform scale changes neither SparseGPT's nor Wanda's choices.

Implementations, one file each: ``reference.py`` (pure torch, the oracle), ``cpu.py`` (blocked
SYRK), ``gpu.py`` (``triton`` and ``cuda``); they register with :mod:`ssgr.ops._registry`.
"""

from __future__ import annotations

import torch

from ssgr.errors import InputError

from .. import _checks
from .._registry import resolve
from . import reference

_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check(H: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    _checks.tensor("H", H, ndim=2)
    _checks.tensor("X", X)
    if H.dtype not in (torch.float32, torch.float64):
        raise InputError(f"H has dtype {H.dtype}; the Hessian accumulates in float32 (or float64)")
    if H.shape[0] != H.shape[1]:
        raise InputError(f"H must be square [d, d], got {tuple(H.shape)}")
    if X.dim() < 1 or X.shape[-1] != H.shape[0]:
        raise InputError(
            f"X has shape {tuple(X.shape)} but H is {tuple(H.shape)}: X's last dimension must be "
            f"d={H.shape[0]} (the module's input features)"
        )
    _checks.floating("X", X, _X_DTYPES)
    if X.dtype == torch.float64 and H.dtype != torch.float64:
        raise InputError("X is float64 but H is float32; use a float64 H for an fp64 oracle")
    _checks.same_device(H=H, X=X)
    if not H.is_contiguous():
        raise InputError("H must be contiguous (allocate it with torch.zeros(d, d))")
    return X.reshape(-1, X.shape[-1])


def hessian_call(H: torch.Tensor, X: torch.Tensor) -> dict:
    """The properties of a :func:`hessian_accumulate` call that dispatch checks against each
    implementation's ``supports`` (:func:`ssgr.ops._registry.resolve`): ``dtype`` (X's),
    ``H_dtype``, ``d`` and ``tokens`` (X's leading dims multiplied)."""
    d = H.shape[0]
    return dict(dtype=X.dtype, H_dtype=H.dtype, d=d, tokens=X.numel() // max(1, d))


def hessian_accumulate(H: torch.Tensor, X: torch.Tensor, *, backend: str | None = None) -> None:
    """Add ``X^T X`` into ``H`` in place.

    Args:
        H: ``[d, d]`` float32 (float64 for an oracle), contiguous; updated in place.
        X: ``[..., d]`` float32/bfloat16/float16 activations; all leading dims are tokens.
        backend: force a backend (see ``ssgr info``); None dispatches by device.
    Raises:
        InputError: a bad shape, dtype, device or a non-contiguous H.
        BackendError: a forced backend that cannot run here or cannot take this call (e.g. a
            float64 H: only the reference and cpu backends accumulate in float64; automatic
            dispatch sends it there).
    """
    X2 = _check(H, X)
    if X2.shape[0] == 0:
        return
    _, fn = resolve("hessian", H.device, backend, **hessian_call(H, X2))
    fn(H, X2)


#: Short inputs are gathered into a buffer of this many tokens before one accumulate call: a
#: 512-token sequence alone makes a small GEMM; a long trace (>= this) is accumulated directly.
GATHER_TOKENS = 2048


class HessianAccumulator:
    """Streaming ``X^T X`` and column squared norms of a module's input, token-averaged.

    Inputs shorter than :data:`GATHER_TOKENS` are copied into a ``[GATHER_TOKENS, d]`` buffer (in
    their dtype) and accumulated when it fills or a result is read, so many short sequences cost
    a few large GEMMs instead of many small ones.

    Args:
        d: input features of the module(s) sharing this input.
        device: where ``H[d, d]`` (float32) lives.
        hessian: False keeps only the column squared norms (Wanda needs no ``d x d`` matrix).
        name: module name(s) used in error messages.
        backend: forced backend for :func:`hessian_accumulate`.
    """

    def __init__(
        self,
        d: int,
        device: torch.device | str = "cpu",
        *,
        hessian: bool = True,
        name: str = "",
        backend: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(d, int) or d <= 0:
            raise InputError(f"d must be a positive int (input features), got {d!r}")
        self.d = d
        self.device = torch.device(device)
        self.name = name
        self.backend = backend
        self.tokens = 0
        self.H: torch.Tensor | None = (
            torch.zeros(d, d, dtype=dtype, device=self.device) if hessian else None
        )
        self._sq = None if hessian else torch.zeros(d, dtype=dtype, device=self.device)
        self._buf: torch.Tensor | None = None
        self._pending = 0

    def add(self, X: torch.Tensor) -> None:
        """Accumulate activations ``X[..., d]`` (moved to the accumulator's device)."""
        X = X.detach()
        if X.device != self.device:
            X = X.to(self.device, non_blocking=True)
        if self.H is not None:
            try:
                X2 = _check(self.H, X)
                t = X2.shape[0]
                if t >= GATHER_TOKENS:
                    self._flush()
                    hessian_accumulate(self.H, X2, backend=self.backend)
                elif t > 0:
                    self._gather(X2)
            except ValueError as exc:
                raise InputError(f"{self.name or 'HessianAccumulator'}: {exc}") from None
            self.tokens += t
            return
        if X.shape[-1] != self.d:
            raise InputError(
                f"{self.name or 'HessianAccumulator'}: X has shape {tuple(X.shape)}, expected "
                f"last dimension d={self.d}"
            )
        X2 = X.reshape(-1, self.d)
        reference.col_sq_norms_accumulate(self._sq, X2)
        self.tokens += X2.shape[0]

    def _gather(self, X2: torch.Tensor) -> None:
        if self._buf is not None and self._buf.dtype != X2.dtype:
            self._flush()
            self._buf = None
        if self._buf is None:
            self._buf = torch.empty(GATHER_TOKENS, self.d, dtype=X2.dtype, device=self.device)
        t = X2.shape[0]
        if self._pending + t > GATHER_TOKENS:
            self._flush()
        self._buf[self._pending : self._pending + t].copy_(X2)
        self._pending += t

    def _flush(self) -> None:
        if self._pending:
            hessian_accumulate(self.H, self._buf[: self._pending], backend=self.backend)
            self._pending = 0

    def sums(self) -> torch.Tensor:
        """The accumulated, not yet token-averaged statistic, for a reduction across processes
        (data-parallel calibration, :meth:`ssgr.prune.dist.DistContext.reduce_stats`): the
        Hessian sum ``H[d, d]`` = sum of ``X^T X`` (float32; pending gathered inputs are
        accumulated first), or, for ``hessian=False``, the column squared norm sums ``[d]``.

        The tensor is the accumulator's own storage: an in-place update (``all_reduce``)
        becomes its statistic; set :attr:`tokens` to the matching (global) token count so
        :meth:`hessian` / :meth:`col_sq_norms` average by it. Summing the sums and the token
        counts of several accumulators gives the accumulator of all their inputs (to fp32
        rounding: the order of the additions differs).
        """
        if self.H is None:
            return self._sq
        self._flush()
        return self.H

    def _checked(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if self.tokens == 0:
            raise InputError(
                f"{self.name or 'HessianAccumulator'}: no tokens were added; the module never saw "
                "calibration input (check the calibration set and the module's hooks)"
            )
        out = t / self.tokens
        _checks.finite(
            f"{self.name or 'HessianAccumulator'} {what}",
            out,
            "the module's calibration activations overflowed or contain NaN/Inf "
            "(try float32/bfloat16 instead of float16, or inspect the calibration data)",
        )
        return out

    def hessian(self) -> torch.Tensor:
        """Token-averaged ``H[d, d] = X^T X / tokens`` (float32)."""
        if self.H is None:
            raise InputError(f"{self.name or 'HessianAccumulator'} was created with hessian=False")
        self._flush()
        return self._checked(self.H, "Hessian")

    def col_sq_norms(self) -> torch.Tensor:
        """Token-averaged column squared norms ``[d]`` (= diag of :meth:`hessian`)."""
        if self.H is not None:
            self._flush()
        src = self.H.diagonal() if self.H is not None else self._sq
        return self._checked(src, "column norms")
