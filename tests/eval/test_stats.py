"""Bootstrap confidence intervals on results with a known answer (ssgr.eval.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from ssgr.errors import InputError
from ssgr.eval.stats import (
    bootstrap_ci,
    format_ci,
    paired_bootstrap_diff,
    paired_values,
    spread,
)


def test_identical_sources_give_a_zero_width_difference():
    rng = np.random.default_rng(1)
    c = rng.integers(0, 5, size=80) / 4  # 80 problems, k=4
    d = paired_bootstrap_diff(c, c.copy())
    assert d["estimate"] == 0.0 and d["lo"] == 0.0 and d["hi"] == 0.0
    ci = bootstrap_ci(c)
    assert ci["lo"] < ci["estimate"] < ci["hi"] and ci["problems"] == 80 and ci["b"] == 2000


def test_same_model_resampled_covers_zero():
    # two independent k-sample evaluations of one model: the difference's CI covers 0
    rng = np.random.default_rng(2)
    p = rng.uniform(0.1, 0.9, size=150)
    a = rng.binomial(4, p) / 4
    b = rng.binomial(4, p) / 4
    d = paired_bootstrap_diff(a, b)
    assert d["lo"] < 0 < d["hi"]


def test_right_where_the_other_is_wrong_excludes_zero():
    a = np.array([1.0] * 30 + [0.5] * 10)
    b = np.array([0.0] * 30 + [0.5] * 10)
    d = paired_bootstrap_diff(a, b)
    assert d["estimate"] == pytest.approx(0.75) and d["lo"] > 0
    r = paired_bootstrap_diff(b, a)
    assert r["hi"] < 0


def test_pairing_is_tighter_than_independent_intervals():
    # shared problem difficulty: the paired interval of a small real gain excludes 0 although
    # the two single-source intervals overlap
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, size=200).round(2)
    a = np.clip(base + 0.05, 0, 1)
    ca, cb = bootstrap_ci(a), bootstrap_ci(base)
    assert ca["lo"] < cb["hi"]
    assert paired_bootstrap_diff(a, base)["lo"] > 0


def test_coverage_on_a_synthetic_binomial():
    # pass@1 of a model with true per-sample accuracy 0.3, 60 problems x k=1: the 95% interval
    # covers the truth in about 95% of repeated experiments
    rng = np.random.default_rng(4)
    hits = 0
    reps = 300
    for r in range(reps):
        c = rng.binomial(1, 0.3, size=60).astype(float)
        ci = bootstrap_ci(c, b=400, seed=r)
        hits += ci["lo"] <= 0.3 <= ci["hi"]
    assert 0.89 <= hits / reps <= 0.99, hits / reps


def test_seeded_and_deterministic():
    c = np.linspace(0, 1, 33)
    assert bootstrap_ci(c) == bootstrap_ci(c)
    assert bootstrap_ci(c, seed=1) != bootstrap_ci(c, seed=2)


def test_paired_values_align_by_problem_id_and_refuse_mismatch():
    a, b = paired_values({"x": 1.0, "y": 0.0}, {"y": 0.5, "x": 0.25})
    assert a.tolist() == [1.0, 0.0] and b.tolist() == [0.25, 0.5]
    with pytest.raises(InputError, match="'z'"):
        paired_values({"x": 1.0}, {"x": 1.0, "z": 0.0})


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(InputError, match="finite"):
        bootstrap_ci([0.5, float("nan")])
    with pytest.raises(InputError, match="same problems"):
        paired_bootstrap_diff([1.0, 0.0], [1.0])
    with pytest.raises(InputError, match="level"):
        bootstrap_ci([1.0], level=1.5)


def test_spread_and_format():
    s = spread([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["draws"]) == (0.5, 0.7, 3)
    assert spread([0.4])["std"] == 0.0
    ci = {"estimate": 0.03, "lo": -0.01, "hi": 0.071}
    assert format_ci(ci, signed=True) == "+0.030 [-0.010, +0.071]"
    assert format_ci(None) == "-"
