"""Drop-in for IST-DASLab's ``quant.py`` (``Quantizer``, ``quantize``): the uniform min/max grid
that IST's SparseGPT drivers (``--wbits``) attach as ``gpt.quantizer`` for joint sparsify +
quantize. :class:`ssgr.compat.sparsegpt.SparseGPT` honours any object with this interface
(IST's own ``Quantizer`` too); this one exists so a driver can drop ``quant.py`` as well::

    from ssgr.compat.quant import Quantizer   # was: from quant import *
    gpt.quantizer = Quantizer()
    gpt.quantizer.configure(4, perchannel=True, sym=False, mse=False)

The grid (GPTQ / SparseGPT papers, Frantar et al. 2022/2023, and IST's code): with ``maxq = 2^bits
- 1``, a range ``[xmin, xmax]`` that always contains 0, ``scale = (xmax - xmin) / maxq`` and an
integer ``zero = round(-xmin / scale)`` (symmetric: ``xmax := max(|xmin|, xmax)``, ``xmin :=
-xmax`` when negative, ``zero = (maxq + 1) / 2``), a value ``x`` maps to
``scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)``: at most ``maxq + 1`` distinct values
per channel, and 0 maps to exactly 0. An all-zero channel uses the range ``[-1, 1]``. ``mse=True``
shrinks the range by ``p = 1, 1 - 1/grid, ...`` (``maxshrink * grid`` steps) and keeps, per
channel, the ``p`` with the least ``sum |q(x) - x|^norm``. Importing this module has no side
effects.
"""

from __future__ import annotations

import torch
from torch import nn

from ssgr.errors import InputError

__all__ = ["Quantizer", "quantize"]


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
             maxq: torch.Tensor | int) -> torch.Tensor:
    """``x`` rounded onto the grid ``scale * (k - zero)``, ``k = 0 .. maxq`` (IST's ``quantize``).

    Args:
        x: any float tensor; ``scale`` and ``zero`` broadcast against it (per-row weight
            parameters are ``[rows, 1]``).
        maxq: the largest grid index, ``2^bits - 1``.
    Returns:
        A tensor of x's broadcast shape and dtype: the dequantized grid values.
    """
    k = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (k - zero)


class Quantizer(nn.Module):
    """IST's ``Quantizer``: per-tensor or per-channel min/max (or MSE-searched) uniform grid.

    Buffers: ``maxq`` (scalar, ``2^bits - 1``; 0 until :meth:`configure`), ``scale`` and
    ``zero`` (after :meth:`find_params` with ``weight=True``: ``[rows, 1, ...]`` float32, one
    pair per output row; zeros before).
    """

    def __init__(self, shape: int = 1) -> None:
        super().__init__()
        self.register_buffer("maxq", torch.tensor(0))
        self.register_buffer("scale", torch.zeros(shape))
        self.register_buffer("zero", torch.zeros(shape))
        self.perchannel, self.sym, self.mse = False, True, False
        self.norm, self.grid, self.maxshrink, self.grouprows = 2.4, 100, 0.8, 1

    def configure(self, bits: int, perchannel: bool = False, sym: bool = True, mse: bool = False,
                  norm: float = 2.4, grid: int = 100, maxshrink: float = 0.8,
                  grouprows: int = 1) -> None:
        """Set the grid: ``bits`` (>= 1), one range per output channel (``perchannel``) or per
        tensor, symmetric or not, MSE range search (``norm``, ``grid``, ``maxshrink``), and
        ``grouprows`` consecutive rows sharing one range (per-channel weights only)."""
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
            raise InputError(f"Quantizer.configure: bits must be an int >= 1, got {bits!r}")
        if isinstance(grouprows, bool) or not isinstance(grouprows, int) or grouprows < 1:
            raise InputError(f"Quantizer.configure: grouprows must be an int >= 1, "
                             f"got {grouprows!r}")
        self.maxq = torch.tensor(2**bits - 1)
        self.perchannel, self.sym, self.mse = bool(perchannel), bool(sym), bool(mse)
        self.norm, self.grid, self.maxshrink = norm, grid, maxshrink
        self.grouprows = grouprows

    def _channels(self, x: torch.Tensor, weight: bool) -> torch.Tensor:
        """``x`` as ``[channels, values]``: one row per range to find."""
        if not self.perchannel:
            return x.flatten().unsqueeze(0)
        if weight:
            x = x.flatten(1)
            if self.grouprows > 1:
                if x.shape[0] % self.grouprows != 0:
                    raise InputError(f"Quantizer: grouprows={self.grouprows} does not divide the "
                                     f"weight's {x.shape[0]} rows")
                x = x.reshape(x.shape[0] // self.grouprows, -1)
            return x
        if x.dim() == 4:  # [B, C, H, W]: one range per channel C
            return x.transpose(0, 1).flatten(1)
        if x.dim() == 3:  # [B, T, C]
            return x.reshape(-1, x.shape[-1]).t()
        if x.dim() == 2:  # [T, C]
            return x.t()
        raise InputError(f"Quantizer: activations must be 2-, 3- or 4-D, got {tuple(x.shape)}")

    def find_params(self, x: torch.Tensor, weight: bool = False) -> None:
        """Find ``scale`` and ``zero`` for ``x`` (a weight ``[rows, ...]`` when ``weight``; an
        activation ``[T, C]``, ``[B, T, C]`` or ``[B, C, H, W]`` otherwise)."""
        if int(self.maxq) <= 0:
            raise InputError("Quantizer.find_params: the quantizer is not configured; call "
                             "configure(bits, perchannel=..., sym=..., mse=...) first")
        dev = x.device
        self.maxq = self.maxq.to(dev)
        shape = x.shape
        xc = self._channels(x, weight)
        zeros = torch.zeros(xc.shape[0], device=dev, dtype=xc.dtype)
        xmin = torch.minimum(xc.min(1)[0], zeros)
        xmax = torch.maximum(xc.max(1)[0], zeros)
        if self.sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = torch.where(xmin < 0, -xmax, xmin)
        flat = (xmin == 0) & (xmax == 0)
        xmin = torch.where(flat, -1.0, xmin)
        xmax = torch.where(flat, 1.0, xmax)
        scale = (xmax - xmin) / self.maxq
        zero = (torch.full_like(scale, (int(self.maxq) + 1) / 2) if self.sym
                else torch.round(-xmin / scale))
        if self.mse:
            scale, zero = self._mse_search(xc, xmin, xmax, scale, zero)
        if not self.perchannel:
            reps = shape[0] if weight else (shape[2] if len(shape) == 3 else shape[1])
            scale, zero = scale.repeat(reps), zero.repeat(reps)
        if weight:
            if self.perchannel and self.grouprows > 1:
                scale = scale.repeat_interleave(self.grouprows)
                zero = zero.repeat_interleave(self.grouprows)
            view = [-1] + [1] * (len(shape) - 1)
        else:
            view = {4: [1, -1, 1, 1], 3: [1, 1, -1], 2: [1, -1]}[len(shape)]
        self.scale = scale.reshape(view)
        self.zero = zero.reshape(view)

    def _mse_search(self, xc: torch.Tensor, xmin: torch.Tensor, xmax: torch.Tensor,
                    scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shrink the range ``p = 1 - i / grid``; per channel keep the least ``|q - x|^norm``."""
        best = torch.full([xc.shape[0]], float("inf"), device=xc.device)
        scale, zero = scale.clone(), zero.clone()
        for i in range(int(self.maxshrink * self.grid)):
            p = 1 - i / self.grid
            lo, hi = p * xmin, p * xmax
            s = (hi - lo) / self.maxq
            z = zero if self.sym else torch.round(-lo / s)
            err = (quantize(xc, s.unsqueeze(1), z.unsqueeze(1), self.maxq) - xc)
            err = err.abs_().pow_(self.norm).sum(1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
        return scale, zero

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the grid when :meth:`ready`, else ``x`` unchanged (IST's behaviour)."""
        if self.ready():
            return quantize(x, self.scale, self.zero, self.maxq)
        return x

    def enabled(self) -> bool:
        """True once configured (``maxq > 0``)."""
        return bool(self.maxq > 0)

    def ready(self) -> bool:
        """True once :meth:`find_params` has set every scale (all nonzero)."""
        return bool(torch.all(self.scale != 0))
