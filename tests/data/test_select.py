import json

import pytest

from ssgr.data.errors import DataError
from ssgr.data.select import STRATEGIES, lower_median, select, strip_thinking
from ssgr.data.traces import Trace

PROMPT = "<|im_start|>user\nQ{pid}<|im_end|>\n<|im_start|>assistant\n<think>\n"


def _resp(pid, s, ntok):
    return f"reasoning for {pid} sample {s} " + "x" * ntok + "\n</think>\n\n\\boxed{1}"


def _row(pid, s, correct, ntok, flags=()):
    return Trace(pid, s, PROMPT.format(pid=pid), _resp(pid, s, ntok), ntok, "stop",
                 "1" if correct else "2", correct, list(flags)).to_dict()


# (problem, [(correct, num_tokens, flags), ...]); samples are numbered in order
SPEC = {
    "P1": [(True, 30, ()), (True, 10, ()), (False, 5, ()), (False, 7, ())],           # c=.5
    "P2": [(True, 8, ()), (True, 9, ()), (True, 10, ()), (True, 11, ())],             # c=1
    "P3": [(False, 8, ()), (False, 9, ()), (False, 3, ()), (False, 4, ())],           # c=0
    "P4": [(True, 20, ()), (True, 20, ()), (True, 5, ("repetition",)), (False, 1, ())],  # c=.75
    "P5": [(True, 20, ("truncated",)), (True, 3, ("no_answer",)), (False, 1, ()), (False, 2, ())],
    "P6": [(True, 50, ()), (True, 40, ()), (True, 40, ()), (True, 60, ()), (True, 10, ()),
           (False, 1, ()), (False, 2, ()), (False, 3, ())],                           # c=.625
    "P7": [(False, 9, ()), (True, 12, ()), (False, 9, ()), (False, 9, ())],           # c=.25
}


@pytest.fixture()
def traces(tmp_path):
    path = tmp_path / "traces.jsonl"
    rows = [_row(pid, s, c, n, f) for pid, spec in SPEC.items() for s, (c, n, f) in enumerate(spec)]
    # interleave problems to check grouping does not depend on file order
    rows = rows[::2] + rows[1::2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sel(*args, **kwargs):
    """select() without the PNG (matplotlib takes ~0.5 s per plot); the plot is tested once."""
    kwargs.setdefault("plot", False)
    return select(*args, **kwargs)


def _picks(res):
    return [(r["problem_id"], r["sample"]) for r in res.rows]


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_ssgr_exact_picks_ties_and_summary(traces, tmp_path):
    out = tmp_path / "calib.jsonl"
    res = select(traces, "ssgr", out)
    assert sorted(_picks(res)) == [("P1", 1), ("P4", 0), ("P6", 2), ("P7", 1)]
    rows = _read(out)
    assert rows == res.rows
    assert set(rows[0]) >= {"problem_id", "source", "text", "num_tokens"}
    r = next(r for r in rows if r["problem_id"] == "P6")
    assert r["text"] == PROMPT.format(pid="P6") + _resp("P6", 2, 40)
    assert r["num_tokens"] == 40 and r["source"] == "ssgr" and r["correctness"] == 0.625
    sm = json.loads((tmp_path / "calib.summary.json").read_text())
    assert sm["dropped"]["too_easy"] == 1 and sm["dropped"]["no_correct"] == 1
    assert sm["dropped"]["no_clean_correct"] == 1
    assert sm["problems_total"] == 7 and sm["samples_total"] == 32 and sm["selected"] == 4
    assert sm["correctness_histogram"]["values"] == {
        "0.0000": 1, "0.2500": 1, "0.5000": 2, "0.6250": 1, "0.7500": 1, "1.0000": 1}
    assert sum(sm["correctness_histogram"]["counts"]) == 7
    assert sm["lengths"]["selected"]["total"] == 10 + 20 + 40 + 12
    png = (tmp_path / "calib.summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert _picks(sel(traces, "median", tmp_path / "m.jsonl")) == _picks(res)


def test_lower_median_ties():
    ts = [Trace("p", s, "", "", n, "stop", "1", True, []) for s, n in enumerate([5, 5, 5, 5])]
    assert lower_median(ts).sample == 1
    assert lower_median(ts[:1]).sample == 0
    assert lower_median(list(reversed(ts[:3]))).sample == 1


def test_tau_boundary(traces, tmp_path):
    # c = tau is kept, c > tau is dropped
    assert ("P4", 0) in _picks(sel(traces, "ssgr", tmp_path / "a.jsonl", tau=0.75))
    res = sel(traces, "ssgr", tmp_path / "b.jsonl", tau=0.7)
    assert sorted(_picks(res)) == [("P1", 1), ("P6", 2), ("P7", 1)]
    assert res.summary["dropped"]["too_easy"] == 2
    res = sel(traces, "ssgr", tmp_path / "c.jsonl", tau=1.0)
    assert ("P2", 1) in _picks(res)  # 4 ties-free lengths 8,9,10,11 -> lower median 9


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("short", [("P1", 1), ("P4", 0), ("P6", 4), ("P7", 1)]),
        ("long", [("P1", 0), ("P4", 1), ("P6", 3), ("P7", 1)]),
        ("easy", [("P2", 1), ("P4", 0)]),
        ("medium", [("P1", 1), ("P6", 2)]),
        ("hard", [("P7", 1)]),
    ],
)
def test_length_and_difficulty_tiers(traces, tmp_path, strategy, expected):
    assert sorted(_picks(sel(traces, strategy, tmp_path / "o.jsonl"))) == expected


def test_sgr_seeded_unfiltered(traces, tmp_path):
    a = sel(traces, "sgr", tmp_path / "a.jsonl", seed=0)
    assert sorted(p for p, _ in _picks(a)) == sorted(SPEC)
    assert _picks(sel(traces, "sgr", tmp_path / "b.jsonl", seed=0)) == _picks(a)
    others = {
        tuple(_picks(sel(traces, "sgr", tmp_path / f"s{k}.jsonl", seed=k))) for k in range(1, 6)
    }
    assert len(others | {tuple(_picks(a))}) > 1
    for pid, s in _picks(a):
        assert 0 <= s < len(SPEC[pid])


def test_no_think_gold_and_tokenizer(traces, tmp_path):
    from tiny import make_tokenizer

    tok = make_tokenizer()
    res = sel(traces, "ssgr", tmp_path / "s.jsonl", tokenizer=tok)
    for r in res.rows:
        assert r["input_ids"] == tok(r["text"], add_special_tokens=False)["input_ids"]
        assert r["num_tokens"] == len(r["input_ids"])
        # prompt_tokens: the ids of the line that are the prompt's own ids
        prompt = PROMPT.format(pid=r["problem_id"])
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        k = r["prompt_tokens"]
        assert 0 < k <= len(p_ids) and k < r["num_tokens"]
        assert r["input_ids"][:k] == p_ids[:k]
        assert k == len(p_ids) or r["input_ids"][k] != p_ids[k]
    nt = sel(traces, "no-think", tmp_path / "n.jsonl", tokenizer=tok)
    assert _picks(nt) == _picks(res)
    r = next(r for r in nt.rows if r["problem_id"] == "P1")
    assert r["text"] == PROMPT.format(pid="P1").removesuffix("\n") + "\n\n</think>\n\n\\boxed{1}"
    assert strip_thinking("no tags") == "no tags"

    problems = tmp_path / "p.jsonl"
    problems.write_text(
        "".join(
            json.dumps(
                {
                    "id": pid,
                    "question": f"Q{pid}",
                    "answer": "1",
                    **(
                        {"solution": f"<think> sol {pid} </think> \\boxed{{1}}"}
                        if pid != "P4"
                        else {}
                    ),
                }
            )
            + "\n"
            for pid in SPEC
        )
    )
    gold = sel(traces, "gold", tmp_path / "g.jsonl", tokenizer=tok, problems=problems)
    assert sorted(p for p, _ in _picks(gold)) == ["P1", "P6", "P7"]
    assert gold.summary["dropped"]["no_solution"] == 1
    r = next(r for r in gold.rows if r["problem_id"] == "P6")
    assert r["text"] == PROMPT.format(pid="P6") + "<think> sol P6 </think> \\boxed{1}"
    with pytest.raises(DataError, match="--problems"):
        sel(traces, "gold", tmp_path / "g2.jsonl", tokenizer=tok)


def test_num_sequences_token_budget_max_length(traces, tmp_path):
    from tiny import make_tokenizer

    res = sel(traces, "ssgr", tmp_path / "a.jsonl", num_sequences=2, seed=0)
    assert len(res.rows) == 2 and res.summary["dropped"]["over_num_sequences"] == 2
    assert set(_picks(res)) < {("P1", 1), ("P4", 0), ("P6", 2), ("P7", 1)}
    assert _picks(sel(traces, "ssgr", tmp_path / "b.jsonl", num_sequences=2, seed=0)) == _picks(res)
    # budget: sequences in file order (P1 10, P4 20, P6 40, P7 12 tokens in problem order)
    res = sel(traces, "ssgr", tmp_path / "c.jsonl", token_budget=35)
    assert [r["num_tokens"] for r in res.rows] == [10, 20]
    assert res.summary["dropped"]["over_token_budget"] == 2
    tok = make_tokenizer()
    res = sel(traces, "ssgr", tmp_path / "d.jsonl", tokenizer=tok, max_length=60)
    assert all(r["num_tokens"] == 60 == len(r["input_ids"]) for r in res.rows)
    assert res.summary["truncated_to_max_length"] == 4


def test_text_corpus_file(tmp_path):
    from tiny import make_tokenizer

    tok = make_tokenizer()
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n\n".join(f"Document number {i} talks about topic {i * 7}." for i in range(30))
    )
    res = sel(None, "text", tmp_path / "t.jsonl", tokenizer=tok, corpus=str(corpus),
                 max_length=100, num_sequences=3)
    assert [r["num_tokens"] for r in res.rows] == [100, 100, 100]
    assert all(r["source"] == "text:c.txt" and len(r["input_ids"]) == 100 for r in res.rows)
    assert all(r["prompt_tokens"] == 0 for r in res.rows)
    res = sel(None, "text", tmp_path / "u.jsonl", tokenizer=tok, corpus=str(corpus),
                 max_length=100, token_budget=250)
    assert [r["num_tokens"] for r in res.rows] == [100, 100, 50]
    with pytest.raises(DataError, match="neither a known corpus"):
        sel(None, "text", tmp_path / "v.jsonl", tokenizer=tok, corpus=str(tmp_path / "nope"))


def test_all_filtered_reports_each_rule(traces, tmp_path):
    out = tmp_path / "calib.jsonl"
    with pytest.raises(
        DataError, match=r"no problem survived.*7 problems.*no_correct=1, too_easy=6"
    ) as e:
        sel(traces, "ssgr", out, tau=0.0)
    assert "Raise --tau" in str(e.value)
    assert not out.exists()
    assert json.loads((tmp_path / "calib.summary.json").read_text())["selected"] == 0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"strategy": "best"}, "unknown strategy 'best'"),
        ({"tau": 1.5}, r"--tau must be in \[0, 1\]"),
        ({"tau": -0.1}, r"--tau must be in \[0, 1\]"),
        ({"num_sequences": 0}, "--num-sequences"),
        ({"strategy": "no-think"}, "needs --tokenizer"),
        ({"strategy": "text", "tokenizer": "unused"}, "needs --corpus"),
    ],
)
def test_bad_options(traces, tmp_path, kwargs, pattern):
    args = {"strategy": "ssgr", **kwargs}
    strategy = args.pop("strategy")
    with pytest.raises(DataError, match=pattern):
        sel(traces, strategy, tmp_path / "o.jsonl", **args)


def test_malformed_traces_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row("P1", 0, True, 3)) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        sel(path, "ssgr", tmp_path / "o.jsonl")


def test_strategy_list():
    assert STRATEGIES == ("ssgr", "sgr", "easy", "medium", "hard", "short", "median", "long",
                          "no-think", "gold", "text")
