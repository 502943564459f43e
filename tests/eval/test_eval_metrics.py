"""pass@1 / length / truncation metrics on hand-checked traces, and bad-input errors."""

from __future__ import annotations

import math

import pytest

from ssgr.data.errors import DataError
from ssgr.data.problems import Problem
from ssgr.data.traces import Trace
from ssgr.eval.accuracy import default_traces_path, evaluate, format_table, metrics_from_traces


def _t(pid: str, s: int, correct: bool, tokens: int, reason: str = "stop", flags=None) -> Trace:
    return Trace(
        pid, s, "prompt", "resp", tokens, reason, "1" if correct else None, correct, flags or []
    )


PROBLEMS = [
    Problem("a", "What is 1 + 1?", "2", level=1),
    Problem("b", "What is 2 + 2?", "4", level=1),
    Problem("c", "What is (1 + 1) * 3?", "6", level=2),
    Problem("d", "free text", "7"),
]
TRACES = [
    # a: 2 of 4 correct -> 0.5
    _t("a", 0, True, 10),
    _t("a", 1, False, 20),
    _t("a", 2, True, 10),
    _t("a", 3, False, 40, "length", ["truncated"]),
    # b: 4 of 4 -> 1.0
    _t("b", 0, True, 10),
    _t("b", 1, True, 10),
    _t("b", 2, True, 10),
    _t("b", 3, True, 10),
    # c: 1 of 4 -> 0.25, two truncated, one without answer
    _t("c", 0, True, 30),
    _t("c", 1, False, 50, "length", ["truncated", "no_answer"]),
    _t("c", 2, False, 50, "length", ["truncated"]),
    _t("c", 3, False, 30),
    # d (no level): 0 of 4
    _t("d", 0, False, 5),
    _t("d", 1, False, 5),
    _t("d", 2, False, 5),
    _t("d", 3, False, 5),
    # ignored: another problem, and a sample index beyond k
    _t("zzz", 0, True, 999),
    _t("b", 4, False, 999),
]


def test_metrics_hand_checked():
    m = metrics_from_traces(TRACES, PROBLEMS, k=4)
    o = m["overall"]
    assert o["problems"] == 4 and o["samples"] == 16
    assert o["pass@1"] == pytest.approx((0.5 + 1.0 + 0.25 + 0.0) / 4)
    assert o["mean_response_tokens"] == pytest.approx((80 + 40 + 160 + 20) / 16)
    assert o["truncation_rate"] == pytest.approx(3 / 16)
    assert o["no_answer_rate"] == pytest.approx(1 / 16)
    assert o["flagged_rate"] == pytest.approx(3 / 16)
    assert list(m["by_level"]) == ["1", "2", "none"]
    l1, l2, ln = m["by_level"]["1"], m["by_level"]["2"], m["by_level"]["none"]
    assert (l1["problems"], l1["samples"]) == (2, 8)
    assert l1["pass@1"] == pytest.approx(0.75)
    assert l1["mean_response_tokens"] == pytest.approx(120 / 8)
    assert l1["truncation_rate"] == pytest.approx(1 / 8)
    assert l2["pass@1"] == pytest.approx(0.25) and l2["truncation_rate"] == pytest.approx(0.5)
    assert ln["pass@1"] == 0.0 and ln["mean_response_tokens"] == 5.0


def test_per_problem_scores_and_ci():
    m = metrics_from_traces(TRACES, PROBLEMS, k=4)
    assert m["per_problem"] == {"a": 0.5, "b": 1.0, "c": 0.25, "d": 0.0}
    ci = m["overall"]["pass@1_ci"]
    assert ci["estimate"] == pytest.approx(m["overall"]["pass@1"])
    assert 0.0 <= ci["lo"] < ci["estimate"] < ci["hi"] <= 1.0 and ci["problems"] == 4


def test_pass_at_1_is_mean_over_problems_not_samples():
    # unequal per-problem correctness: pass@1 averages per-problem rates (same k -> same as samples)
    probs = PROBLEMS[:2]
    m = metrics_from_traces(TRACES, probs, k=2)  # samples 0,1 only
    assert m["overall"]["samples"] == 4
    assert m["overall"]["pass@1"] == pytest.approx((0.5 + 1.0) / 2)


def test_missing_samples_and_bad_k():
    with pytest.raises(DataError, match="problem 'a' has 4 samples.*k=5"):
        metrics_from_traces(TRACES, PROBLEMS, k=5)
    with pytest.raises(DataError, match="k must be >= 1"):
        metrics_from_traces(TRACES, PROBLEMS, k=0)
    with pytest.raises(DataError, match="no problems"):
        metrics_from_traces(TRACES, [], k=1)


def test_format_table_rows():
    m = metrics_from_traces(TRACES, PROBLEMS, k=4)
    table = format_table({**m})
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["level", "problems", "samples", "pass@1"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert set(rows) == {"1", "2", "none", "all"}
    assert rows["1"][3] == "0.750" and rows["all"][3] == "0.438"
    assert not any(math.isnan(float(x)) for x in rows["all"][1:])


def test_default_traces_path(tmp_path):
    assert default_traces_path(tmp_path / "EVAL.json") == tmp_path / "EVAL.traces.jsonl"


def test_evaluate_rejects_bad_input(tmp_path):
    with pytest.raises(DataError, match="k must be >= 1"):
        evaluate("tiny", "builtin:arith?n=10", k=0)
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        evaluate(str(tmp_path / "no-such-model"), "builtin:arith?n=10", k=1)
    bad = tmp_path / "p.jsonl"
    bad.write_text(
        '{"id": 1, "question": "What is 1 + 1?", "answer": "2"}\n{"id": 2, "question": \n'
    )
    with pytest.raises(DataError, match=r"p\.jsonl:2: malformed JSON"):
        evaluate("tiny", bad, k=1)
    with pytest.raises(DataError, match="limit must be >= 1"):
        evaluate("tiny", "builtin:arith?n=10", k=1, limit=0)
