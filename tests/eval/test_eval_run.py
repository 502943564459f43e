"""``ssgr eval`` end to end with the embedded tiny model (small k, few problems)."""

from __future__ import annotations

import argparse
import json

import pytest

from ssgr.data.traces import read_traces
from ssgr.eval import cli as eval_cli
from ssgr.eval.accuracy import evaluate, metrics_from_traces, per_problem_scores, select_problems

SRC = "builtin:arith?n=100&levels=1"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssgr")
    eval_cli.register(p.add_subparsers(dest="command", required=True))
    return p


def test_sampled_eval_writes_json_and_traces(tmp_path):
    out = tmp_path / "EVAL.json"
    res = evaluate("tiny", SRC, k=2, limit=6, batch_size=12, out=out, device="cpu", progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    traces = read_traces(tmp_path / "EVAL.traces.jsonl")
    assert len(traces) == 12 and {t.sample for t in traces} == {0, 1}
    probs = select_problems(SRC, limit=6)
    held = {p.id for p in select_problems(SRC, split="heldout")}
    assert {t.problem_id for t in traces} == {p.id for p in probs} <= held
    assert res["overall"] == metrics_from_traces(traces, probs, 2)["overall"]
    assert list(res["per_problem"]) == [p.id for p in probs]
    assert per_problem_scores(res) == res["per_problem"]
    # a result of an older ssgr (no per_problem) is rescored from its traces
    old = {k: v for k, v in res.items() if k != "per_problem"}
    assert per_problem_scores(old) == res["per_problem"]
    ci = res["overall"]["pass@1_ci"]
    assert ci["lo"] <= res["overall"]["pass@1"] <= ci["hi"] and ci["problems"] == 6
    assert (
        res["k"] == 2 and res["settings"]["temperature"] == 0.6 and res["settings"]["top_p"] == 0.95
    )
    # the tiny model answers in its format and solves most one-step problems (TRAINING.md: 99%)
    assert res["overall"]["no_answer_rate"] == 0.0 and res["overall"]["truncation_rate"] == 0.0
    assert res["overall"]["pass@1"] >= 0.75
    assert all(
        t.response.startswith("<think> ") and "</think> \\boxed{" in t.response for t in traces
    )
    # re-running resumes: nothing new is generated, same numbers
    again = evaluate(
        "tiny", SRC, k=2, limit=6, batch_size=12, out=out, device="cpu", progress=False
    )
    assert (
        again["overall"] == res["overall"]
        and len(read_traces(tmp_path / "EVAL.traces.jsonl")) == 12
    )


def test_cli_greedy(tmp_path, capsys):
    args = _parser().parse_args(
        [
            "eval",
            "tiny",
            "--problems",
            SRC,
            "--greedy",
            "--k",
            "4",
            "--limit",
            "5",
            "--out",
            str(tmp_path / "G.json"),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "k=1, greedy" in text and text.splitlines()[-3].startswith("all")
    assert text.splitlines()[-2].startswith("pass@1 ") and "95% bootstrap CI over 5" in text
    res = json.loads((tmp_path / "G.json").read_text())
    assert res["k"] == 1 and res["greedy"] and res["settings"]["temperature"] == 0.0
    assert res["overall"]["samples"] == 5


def test_cli_errors(tmp_path, capsys, caplog):
    from ssgr.cli import main

    p = _parser()
    with caplog.at_level("ERROR"):
        assert main(["eval", "tiny", "--problems", SRC, "--k", "0"]) == 2
        assert main(["eval", str(tmp_path / "nope"), "--problems", SRC]) == 2
        assert main(["ppl", "tiny"]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and "neither a known name" in errors[1].getMessage()
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "tiny"])  # --problems is required


def test_cli_ppl(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("What is 3 + 4?\n\nThe answer is 7.")
    args = _parser().parse_args(
        [
            "ppl",
            "tiny",
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "P.json"),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith(f"corpus {corpus}: ppl ")
    assert json.loads((tmp_path / "P.json").read_text())["corpus"]["tokens"] > 0
