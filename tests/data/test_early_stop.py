"""``ssgr generate --early-stop``: a problem stops being sampled once more than tau x n of its
samples are correct; the ssgr selection is the same CALIB.jsonl as from the full samples (on
hand-built traces replayed through the Backend interface, and on a real run of the tiny model),
and an interrupted early-stop run resumes to the same traces."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest

from ssgr.data.backends.base import Completion, Request
from ssgr.data.generate import (
    early_stop_cost,
    early_stop_decided,
    early_stop_first_round,
    generate,
)
from ssgr.data.problems import Problem, arith_problems
from ssgr.data.select import select
from ssgr.data.traces import read_traces

N = 8
TAU = 0.75
#: Per problem, which of the N samples are correct (hand-built): dropped as too easy and decided
#: after 7 samples (a, e), dropped but decided only by the 8th (b: nothing saved), kept (c: 5/8,
#: f: 6/8 = tau, which needs the 8th sample to be known), c = 0 (d).
SPEC = {
    "a": [1, 1, 1, 1, 1, 1, 1, 0],
    "b": [1, 1, 0, 1, 1, 1, 1, 1],
    "c": [1, 0, 1, 0, 1, 1, 0, 1],
    "d": [0] * N,
    "e": [1] * N,
    "f": [1, 1, 1, 1, 1, 1, 0, 0],
}
PROBLEMS = [Problem(pid, f"Q {pid}", "7", solution="so 7") for pid in SPEC]


class Replay:
    """A generation backend answering each (problem, sample) with a hand-built response: correct
    ones box the gold answer 7, wrong ones box 8; lengths differ per sample so the median
    matters. Records every request it is asked for."""

    name = "replay"

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        return "<user>" + messages[0]["content"] + "<assistant>"

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        for r in requests:
            self.asked.append((r.problem_id, r.sample))
            ok = SPEC[r.problem_id][r.sample]
            words = " step" * (3 + (5 * r.sample) % 7)
            yield Completion(r, f"<think>{words}</think> \\boxed{{{7 if ok else 8}}}",
                             4 + (5 * r.sample) % 7, "stop")

    def close(self) -> None:
        pass


def _gen(out, **kw):
    backend = Replay()
    st = generate("replay", PROBLEMS, out, n=N, backend_obj=backend, progress=False, tau=TAU,
                  **kw)
    return st, backend


def test_rule_and_first_round():
    assert early_stop_first_round(16, 0.75) == 13 and early_stop_first_round(8, 0.75) == 7
    assert early_stop_first_round(4, 0.75) == 4 and early_stop_first_round(4, 1.0) == 4
    assert early_stop_decided(13, 16, 0.75) and not early_stop_decided(12, 16, 0.75)


def test_hand_built_traces_same_calibration_set(tmp_path):
    full, _ = _gen(tmp_path / "full.jsonl")
    es, backend = _gen(tmp_path / "es.jsonl", early_stop=True)
    assert full.written == 6 * N
    # a and e are decided after 7 samples; b only at 8 (nothing saved); c, d, f need all 8
    assert (es.written, es.early_stopped, es.samples_saved) == (6 * N - 2, 2, 2)
    assert ("a", 7) not in backend.asked and ("e", 7) not in backend.asked
    assert es.tokens_saved_estimate > 0
    # the counterfactual on the full traces says the same
    cost = early_stop_cost(read_traces(tmp_path / "full.jsonl"), N, TAU)
    assert cost == {"samples": 6 * N - 2, "tokens": es.tokens, "samples_saved": 2,
                    "tokens_saved": full.tokens - es.tokens, "problems_stopped": 2}
    for strategy in ("ssgr", "short", "long", "no-think", "gold"):
        kw = {"tokenizer": None}
        if strategy in ("no-think", "gold"):
            pytest.importorskip("tokenizers")
            from tiny import make_tokenizer

            kw = {"tokenizer": make_tokenizer()}
        if strategy == "gold":
            from ssgr.data.problems import write_problems

            write_problems(tmp_path / "p.jsonl", PROBLEMS)
            kw["problems"] = str(tmp_path / "p.jsonl")
        a = select(tmp_path / "full.jsonl", strategy, tmp_path / f"{strategy}-full.jsonl",
                   tau=TAU, plot=False, **kw)
        b = select(tmp_path / "es.jsonl", strategy, tmp_path / f"{strategy}-es.jsonl",
                   tau=TAU, plot=False, **kw)
        assert (tmp_path / f"{strategy}-full.jsonl").read_bytes() == \
            (tmp_path / f"{strategy}-es.jsonl").read_bytes(), strategy
        assert [r["problem_id"] for r in a.rows] == ["c", "f"] == [r["problem_id"] for r in b.rows]


def test_interrupted_early_stop_resumes_to_the_same_traces(tmp_path):
    ref = tmp_path / "ref.jsonl"
    _gen(ref, early_stop=True)
    lines = ref.read_text().splitlines(keepends=True)
    for cut in (3, 30, len(lines) - 1):
        out = tmp_path / f"cut{cut}.jsonl"
        out.write_text("".join(lines[:cut]))
        st, backend = _gen(out, early_stop=True)
        assert st.skipped == cut and st.written == len(lines) - cut
        key = {(json.loads(x)["problem_id"], json.loads(x)["sample"]): x
               for x in out.read_text().splitlines()}
        assert key == {(json.loads(x)["problem_id"], json.loads(x)["sample"]): x.rstrip("\n")
                       for x in lines}
        assert not set(backend.asked) & {tuple(k) for k in list(key)[:cut]}
    # a finished full run is left alone by an early-stop run (nothing pending)
    full = tmp_path / "full.jsonl"
    _gen(full)
    st, backend = _gen(full, early_stop=True)
    assert st.written == 0 and not backend.asked


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_model_early_stop_gives_the_same_selection(tmp_path):
    # the embedded trained tiny model (ssgr/models/tiny): it solves level-1 problems nearly always
    probs = arith_problems(10, seed=3, levels=(1, 3))
    kw = dict(n=N, max_new_tokens=64, progress=False, tau=TAU, device="cpu")
    generate("tiny", probs, tmp_path / "full.jsonl", **kw)
    st = generate("tiny", probs, tmp_path / "es.jsonl", early_stop=True, **kw)
    full = read_traces(tmp_path / "full.jsonl")
    es = {(t.problem_id, t.sample): t for t in read_traces(tmp_path / "es.jsonl")}
    # the samples drawn are the full run's samples (per-sample seeds), only fewer
    assert all(es[(t.problem_id, t.sample)].response == t.response
               for t in full if (t.problem_id, t.sample) in es)
    cost = early_stop_cost(full, N, TAU)
    assert st.written == cost["samples"] and st.samples_saved == cost["samples_saved"]
    assert st.samples_saved > 0  # the tiny model solves easy problems: some stop early
    a = select(tmp_path / "full.jsonl", "ssgr", tmp_path / "a.jsonl", tau=TAU, plot=False)
    select(tmp_path / "es.jsonl", "ssgr", tmp_path / "b.jsonl", tau=TAU, plot=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a.rows
