"""Confidence intervals for pass@1: the bootstrap over problems, and the paired bootstrap of the
difference between two evaluations of the same problems.

pass@1 over ``k`` samples is the mean over problems of ``c_i = correct_i / k``. The problems are
the unit of resampling: a problem's ``k`` samples stay together (the bootstrap draws problems
with replacement and takes each drawn problem's ``c_i``), so the interval accounts for the
spread between problems and, through ``c_i``, for the sampling of each problem's responses.
Intervals use the percentile method (Efron & Tibshirani, *An Introduction to the Bootstrap*,
1993, ch. 13) with ``B = 2000`` resamples by default and a fixed seed, so the same results give
the same interval on every run. The difference of two sources evaluated on the same problems is
bootstrapped **paired by problem** (one set of resampled problem indices for both: the
per-problem differences ``c_i^A - c_i^B`` are resampled; Koehn, *Statistical Significance Tests
for Machine Translation Evaluation*, EMNLP 2004), which removes the between-problem variance the
two share. Pure numpy; nothing is drawn at import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssgr.errors import InputError

#: Default bootstrap resamples, confidence level and seed.
BOOTSTRAP_B = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
#: Resampled problems drawn per chunk (bounds the ``[B, n]`` index matrix's memory).
_CHUNK_ELEMENTS = 1 << 22


def _bootstrap_means(values: np.ndarray, b: int, seed: int) -> np.ndarray:
    """``[b]`` float64 means of ``b`` resamples (with replacement) of the ``[n]`` ``values``."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = np.empty(b, dtype=np.float64)
    for start in range(0, b, rows):
        m = min(rows, b - start)
        idx = rng.integers(0, n, size=(m, n))
        out[start : start + m] = values[idx].mean(axis=1)
    return out


def _check(values: Sequence[float] | np.ndarray, what: str, b: int, level: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise InputError(f"{what}: need a non-empty list of per-problem values, got shape "
                         f"{tuple(v.shape)}")
    if not np.isfinite(v).all():
        raise InputError(f"{what}: per-problem values must be finite (NaN or inf found)")
    if b < 1:
        raise InputError(f"bootstrap resamples must be >= 1, got {b}")
    if not 0 < level < 1:
        raise InputError(f"confidence level must be in (0, 1), got {level}")
    return v


def _interval(est: float, boots: np.ndarray, level: float, b: int, seed: int,
              n: int) -> dict[str, Any]:
    alpha = 1.0 - level
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    # a CI must contain its estimate; rounding in the mean of identical values could break that
    return {"estimate": est, "lo": float(min(lo, est)), "hi": float(max(hi, est)),
            "level": level, "b": b, "seed": seed, "problems": n, "method": "percentile"}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, b: int = BOOTSTRAP_B, level: float = LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Mean of per-problem values with its percentile-bootstrap confidence interval.

    Args:
        values: ``[n]`` per-problem scores (float, e.g. ``c_i = correct_i / k`` in [0, 1]).
        b: bootstrap resamples; level: confidence level; seed: numpy generator seed.
    Returns:
        ``{"estimate", "lo", "hi", "level", "b", "seed", "problems", "method"}``; ``estimate`` is
        the plain mean (pass@1 for ``c_i``).
    Raises:
        InputError for an empty or non-finite ``values``, ``b < 1`` or ``level`` outside (0, 1).
    """
    v = _check(values, "bootstrap_ci", b, level)
    return _interval(float(v.mean()), _bootstrap_means(v, b, seed), level, b, seed, v.size)


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray, b_values: Sequence[float] | np.ndarray, *,
    b: int = BOOTSTRAP_B, level: float = LEVEL, seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """``mean(a) - mean(b_values)`` with a paired percentile-bootstrap confidence interval.

    Args:
        a, b_values: ``[n]`` per-problem scores of two sources, aligned (entry ``i`` of both is
            the same problem; see :func:`paired_values`).
        b: resamples; level: confidence level; seed: numpy generator seed.
    Returns:
        as :func:`bootstrap_ci`, ``estimate`` being the difference. Identical per-problem values
        give exactly ``[0, 0]``.
    Raises:
        InputError when the two are not equally long, or as :func:`bootstrap_ci`.
    """
    va = _check(a, "paired_bootstrap_diff (first)", b, level)
    vb = _check(b_values, "paired_bootstrap_diff (second)", b, level)
    if va.shape != vb.shape:
        raise InputError(f"paired_bootstrap_diff: {va.size} vs {vb.size} problems; the two "
                         "sources must be scored on the same problems")
    d = va - vb
    return _interval(float(d.mean()), _bootstrap_means(d, b, seed), level, b, seed, d.size)


def paired_values(a: Mapping[str, float], b: Mapping[str, float],
                  what: str = "sources") -> tuple[np.ndarray, np.ndarray]:
    """Align two ``{problem_id: score}`` maps by problem id (order of ``a``).

    Raises:
        InputError naming up to five ids present in only one of them.
    """
    only = sorted(set(a) ^ set(b))
    if only:
        shown = ", ".join(repr(x) for x in only[:5])
        raise InputError(f"{what}: {len(only)} problem(s) scored in only one of the two "
                         f"({shown}); a paired comparison needs the same problems")
    ids = list(a)
    return (np.array([a[i] for i in ids], dtype=np.float64),
            np.array([b[i] for i in ids], dtype=np.float64))


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1; 0 for one value), min and max of ``values``
    (e.g. one pass@1 per calibration draw)."""
    v = [float(x) for x in values]
    if not v:
        raise InputError("spread: no values")
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(v), "max": max(v), "draws": len(v)}


def format_ci(ci: Mapping[str, Any] | None, fmt: str = ".3f", signed: bool = False) -> str:
    """``"0.512 [0.480, 0.545]"`` (``"+0.030 [-0.010, +0.071]"`` with ``signed``); ``"-"`` for
    None."""
    if not ci:
        return "-"
    f = ("+" if signed else "") + fmt
    return f"{ci['estimate']:{f}} [{ci['lo']:{f}}, {ci['hi']:{f}}]"
