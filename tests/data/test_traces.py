import json

import pytest

from ssgr.data.errors import DataError
from ssgr.data.traces import TRACE_FIELDS, Trace, TraceWriter, read_traces, repair_partial_tail


def _t(pid, s, **kw):
    d = dict(problem_id=pid, sample=s, prompt="P", response="R </think> \\boxed{1}", num_tokens=5,
             finish_reason="stop", answer="1", correct=True, flags=[])
    d.update(kw)
    return Trace(**d)


def test_writer_roundtrip_and_resume(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as w:
        w.write_many([_t("a", 0), _t("a", 1, flags=["truncated"], finish_reason="length")])
    lines = path.read_text().splitlines()
    assert [list(json.loads(x)) for x in lines] == [list(TRACE_FIELDS)] * 2
    with TraceWriter(path) as w:
        assert w.done == {("a", 0), ("a", 1)}
        with pytest.raises(DataError, match="already written"):
            w.write(_t("a", 1))
        w.write(_t("b", 0))
    got = read_traces(path)
    assert [(t.problem_id, t.sample) for t in got] == [("a", 0), ("a", 1), ("b", 0)]
    assert got[1].flags == ["truncated"] and not got[1].clean


def test_partial_tail_is_repaired(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as w:
        w.write_many([_t("a", 0), _t("a", 1)])
    full = path.read_bytes()
    path.write_bytes(full[:-25])  # killed in the middle of the second line
    assert repair_partial_tail(path) > 0
    assert path.read_bytes() == full[: full.index(b"\n") + 1]
    with TraceWriter(path) as w:
        assert w.done == {("a", 0)}
    assert repair_partial_tail(path) == 0


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda lines: lines.__setitem__(1, lines[1][:-3]), r"t\.jsonl:2: malformed JSON"),
        (lambda lines: lines.__setitem__(1, json.dumps({"problem_id": "a", "sample": 1})),
         r"t\.jsonl:2: trace is missing field\(s\) \['prompt'"),
        (lambda lines: lines.__setitem__(1, lines[0]), r"t\.jsonl:2: duplicate trace .*line 1"),
        (lambda lines: lines.__setitem__(1, lines[1].replace('"stop"', '"eos"')),
         r"t\.jsonl:2: bad value for trace field 'finish_reason'"),
    ],
)
def test_bad_traces(tmp_path, mutate, pattern):
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(_t("a", i).to_dict()) for i in range(3)]
    mutate(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=pattern):
        read_traces(path)


def test_empty_traces(tmp_path):
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_traces(tmp_path / "t.jsonl")
