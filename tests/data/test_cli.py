import argparse
import json
import logging

import pytest

from ssgr.data.cli import register
from ssgr.data.problems import arith_problems, write_problems

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _parser():
    p = argparse.ArgumentParser(prog="ssgr")
    register(p.add_subparsers(dest="command", required=True))
    return p


def _run(argv):
    """The exit status of ``ssgr ARGV`` (errors reported the way the command line does)."""
    from ssgr.cli import main

    return main(argv)


def test_generate_then_select_cli(tiny_model_dir, tmp_path, caplog):
    probs = tmp_path / "p.jsonl"
    write_problems(probs, arith_problems(4))
    traces = tmp_path / "t.jsonl"
    rc = _run(
        [
            "generate",
            str(tiny_model_dir),
            "--problems",
            str(probs),
            "--out",
            str(traces),
            "--n",
            "2",
            "--max-new-tokens",
            "8",
            "--split",
            "calib",
            "--heldout-fraction",
            "0.25",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in traces.read_text().splitlines()]
    assert len(rows) == 6 and len({r["problem_id"] for r in rows}) == 3
    # a random model gets nothing right: every rule is reported, exit code 2, no calib file
    out = tmp_path / "c.jsonl"
    with caplog.at_level(logging.ERROR):
        rc = _run(["select", str(traces), "--strategy", "ssgr", "--out", str(out), "--no-plot"])
    assert rc == 2 and "no_correct=3" in caplog.text and not out.exists()
    rc = _run(["select", str(traces), "--strategy", "sgr", "--out", str(out), "--tokenizer",
               str(tiny_model_dir), "--no-plot"])
    assert rc == 0
    calib = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(calib) == 3 and all(len(r["input_ids"]) == r["num_tokens"] > 0 for r in calib)


def test_cli_bad_input(tmp_path, caplog):
    with pytest.raises(SystemExit):
        _parser().parse_args(["select", "t.jsonl", "--strategy", "nope", "--out", "o.jsonl"])
    traces = tmp_path / "t.jsonl"
    traces.write_text("{not json\n")
    with caplog.at_level(logging.ERROR):
        assert (
            _run(["select", str(traces), "--strategy", "ssgr", "--out", str(tmp_path / "o.jsonl")])
            == 2
        )
        assert (
            _run(["select", str(traces), "--strategy", "ssgr", "--tau", "2", "--out", "o.jsonl"])
            == 2
        )
        assert (
            _run(
                ["generate", "m", "--problems", str(tmp_path / "missing.jsonl"), "--out", "x.jsonl"]
            )
            == 2
        )
    assert "t.jsonl:1: malformed JSON" in caplog.text
    assert "--tau must be in [0, 1]" in caplog.text
    assert "missing.jsonl' does not exist" in caplog.text


@pytest.mark.parametrize(
    "line,match",
    [
        (b'{"id": "a", "question": "1+1?", "answer": "\xff2"}',
         r"p\.jsonl:2: not valid UTF-8 \(byte 0xff"),
        (b'{"id": "a", "question": "1+1?", "answer": NaN}',
         r"p\.jsonl:2: NaN is not a finite number"),
        (b'{"id": "a", "question": "1+1?", "answer": -Infinity}',
         r"p\.jsonl:2: -Infinity is not a"),
        (b'{"id": "a", "question": ' + b"[" * 100_000 + b"]" * 100_000 + b', "answer": 2}',
         r"p\.jsonl:2: malformed JSON .*nested too deeply"),
    ],
)
def test_bad_problems_lines_name_file_and_line(tmp_path, caplog, line, match):
    """#19 items 1 and 3 through `ssgr generate`: a problems line that is not UTF-8, carries
    NaN/Infinity or is nested 100,000 deep is one ERROR naming FILE:LINE, exit 2, no traceback and
    no TRACES written (the model is never loaded: the problems are read first)."""
    import re

    probs = tmp_path / "p.jsonl"
    probs.write_bytes(b'{"id": "ok", "question": "2+2?", "answer": "4"}\n' + line + b"\n")
    traces = tmp_path / "t.jsonl"
    with caplog.at_level(logging.ERROR, logger="ssgr"):
        rc = _run(["generate", "tiny", "--problems", str(probs), "--out", str(traces), "--n", "1"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.search(match, errors[0]), errors
    assert not traces.exists() or traces.stat().st_size == 0


def test_bad_traces_line_names_file_and_line(tmp_path, caplog):
    """The same reader for TRACES.jsonl (`ssgr select`): a byte that is not UTF-8 on line 1."""
    traces = tmp_path / "t.jsonl"
    traces.write_bytes(b'{"problem_id": "\xfe"}\n')
    with caplog.at_level(logging.ERROR, logger="ssgr"):
        rc = _run(["select", str(traces), "--strategy", "ssgr", "--out", str(tmp_path / "c.jsonl")])
    assert rc == 2
    assert any("t.jsonl:1: not valid UTF-8 (byte 0xfe" in r.getMessage() for r in caplog.records)
