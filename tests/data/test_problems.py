import json
import re

import pytest

from ssgr.data.errors import DataError
from ssgr.data.problems import (
    arith_problem,
    arith_problems,
    choose_split,
    load_problems,
    read_problems_file,
    split_problems,
    write_problems,
)
from ssgr.data.verify import answers_match, extract_answer


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_valid(tmp_path):
    p = _write(
        tmp_path / "p.jsonl",
        [
            json.dumps(
                {
                    "id": "a",
                    "question": "What is 1+1?",
                    "answer": "2",
                    "solution": "1+1=2",
                    "src": "x",
                }
            ),
            "",
            json.dumps({"id": 7, "question": "2*3?", "answer": 6}),
        ],
    )
    probs = read_problems_file(p)
    assert [x.id for x in probs] == ["a", "7"]
    assert probs[0].solution == "1+1=2" and probs[0].meta == {"src": "x"}
    assert probs[1].answer == "6" and probs[1].solution is None
    assert load_problems(p, limit=1) == probs[:1]


@pytest.mark.parametrize(
    "bad_line, pattern",
    [
        ('{"id": "b", "question": "q", ', r"p\.jsonl:2: malformed JSON"),
        ('{"id": "b", "answer": "1"}', r"p\.jsonl:2: .*missing required field\(s\) \['question'\]"),
        ('{"id": "b", "question": "", "answer": "1"}', r"p\.jsonl:2: field 'question'"),
        (
            '{"id": "a", "question": "q", "answer": "1"}',
            r"p\.jsonl:2: duplicate problem id 'a'.*line 1",
        ),
        ("[1, 2]", r"p\.jsonl:2: .*JSON object"),
        ('{"id": "b", "question": "q", "answer": [1]}', r"p\.jsonl:2: field 'answer'"),
    ],
)
def test_bad_problems(tmp_path, bad_line, pattern):
    p = _write(
        tmp_path / "p.jsonl", [json.dumps({"id": "a", "question": "q", "answer": "1"}), bad_line]
    )
    with pytest.raises(DataError, match=pattern):
        read_problems_file(p)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_problems(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no problems"):
        read_problems_file(_write(tmp_path / "e.jsonl", []))
    with pytest.raises(DataError, match="unknown built-in"):
        load_problems("builtin:nope")
    with pytest.raises(DataError, match="unknown option"):
        load_problems("builtin:arith?m=3")


def test_arith_deterministic_levels_and_solutions():
    a = arith_problems(50, seed=3)
    assert a == arith_problems(50, seed=3)
    assert a[:10] == arith_problems(10, seed=3)  # prefix-stable
    assert a != arith_problems(50, seed=4)
    assert [p.level for p in a[:10]] == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    assert len({p.id for p in a}) == 50
    for p in a:
        m = re.fullmatch(r"<think> (.*) </think> \\boxed\{(-?\d+)\}", p.solution)
        assert m, p.solution
        steps = m.group(1).split("; ")
        assert len(steps) == p.level
        prev = None
        for s in steps:
            lhs, rhs = s.split(" = ")
            x, op, y = lhs.split(" ")
            assert prev is None or int(x) == prev
            assert eval(lhs) == int(rhs)  # noqa: S307 - integers and + - * only
            assert 0 <= int(rhs) <= 999
            prev = int(rhs)
        assert str(prev) == p.answer == m.group(2)
        expr = p.question.removeprefix("What is ").removesuffix("?")
        assert eval(expr) == int(p.answer)  # noqa: S307
        assert answers_match(extract_answer(p.solution), p.answer)
    assert arith_problem(7, seed=3) == a[7]


def test_builtin_arith_options():
    ps = load_problems("builtin:arith?n=12&seed=1&levels=2-3")
    assert len(ps) == 12 and {p.level for p in ps} == {2, 3}
    assert len(load_problems("builtin:arith")) == 1000


def test_split_disjoint_deterministic(tmp_path):
    ps = arith_problems(100)
    calib, held = split_problems(ps, 0.2, seed=0)
    assert len(held) == 20 and len(calib) == 80
    assert not {p.id for p in calib} & {p.id for p in held}
    assert split_problems(ps, 0.2, seed=0) == (calib, held)
    # depends on ids, not on order
    rev_calib, rev_held = split_problems(ps[::-1], 0.2, seed=0)
    assert {p.id for p in rev_held} == {p.id for p in held}
    assert {p.id for p in split_problems(ps, 0.2, seed=1)[1]} != {p.id for p in held}
    assert choose_split(ps, "heldout", 0.2, 0) == held
    assert choose_split(ps, "all") == ps
    with pytest.raises(DataError, match="unknown split"):
        choose_split(ps, "train")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        split_problems(ps, 1.5)
    write_problems(tmp_path / "h.jsonl", held)
    assert read_problems_file(tmp_path / "h.jsonl") == held
