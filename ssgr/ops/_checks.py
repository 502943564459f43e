"""Argument validation shared by the public ops: every message names the argument and the fix;
every failure is an :class:`ssgr.errors.InputError` (a ValueError)."""

from __future__ import annotations

import torch

from ssgr.errors import InputError

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def tensor(name: str, x: object, *, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise InputError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    return x


def floating(name: str, x: torch.Tensor, allowed: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> None:
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise InputError(f"{name} has dtype {x.dtype}; use one of {names} (e.g. {name}.float())")


def same_device(**tensors: torch.Tensor) -> None:
    devs = {k: v.device for k, v in tensors.items()}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{k} on {v}" for k, v in devs.items())
        raise InputError(f"tensors must be on one device ({desc}); move them with .to(device)")


def all_finite(x: torch.Tensor) -> bool:
    """True when x has no NaN/Inf (one reduction pass, no temporary: min/max propagate NaN)."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def finite(name: str, x: torch.Tensor, hint: str = "") -> None:
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{name} has {bad} NaN/Inf entries{': ' + hint if hint else ''}")


def sparsity_value(name: str, s: object) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise InputError(f"{name} must be a float in [0, 1), got {s!r}")
    s = float(s)
    if not 0.0 <= s < 1.0:
        raise InputError(f"{name} must be in [0, 1) (fraction of weights removed), got {s}")
    return s


def nm_pattern(n: object, m: object, cols: int, what: str = "scores") -> tuple[int, int]:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n, m)):
        raise InputError(f"n and m must be ints (keep n of every m), got n={n!r}, m={m!r}")
    if not 0 < n < m:
        raise InputError(f"N:M pattern needs 0 < n < m (keep n of every m), got n={n}, m={m}")
    if cols % m != 0:
        raise InputError(
            f"{what} has {cols} columns, not divisible by m={m}; N:M groups run along the input "
            "dimension, so choose m dividing it or prune this module unstructured"
        )
    return n, m
