import json
import socket
from pathlib import Path

import pytest
from openai_server import start_server, stop_server

from ssgr.data.errors import DataError, GenerationError
from ssgr.data.generate import generate
from ssgr.data.problems import arith_problems

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The local OpenAI-compatible test server (127.0.0.1, ephemeral port, stops by itself)."""
    proc, url = start_server(tiny_model_dir, "--idle-timeout", "60")
    try:
        yield url
    finally:
        stop_server(proc)


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_openai_completions_and_chat(server, tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    probs = arith_problems(2)
    kw = dict(generator="openai", server=server, n=2, max_new_tokens=12, progress=False)
    st = generate(model, probs, tmp_path / "a.jsonl", **kw)
    assert st.written == 4
    rows = _lines(tmp_path / "a.jsonl")
    for r in rows:
        assert r["prompt"].endswith("<|im_start|>assistant\n<think>\n")  # formatted locally
        assert 1 <= r["num_tokens"] <= 12 and r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == ("truncated" in r["flags"])
    # per-sample seeds go to the server: same seed, same samples; different samples differ
    generate(model, probs, tmp_path / "b.jsonl", **kw)
    assert _lines(tmp_path / "b.jsonl") and sorted(
        map(json.dumps, _lines(tmp_path / "b.jsonl"))
    ) == sorted(map(json.dumps, rows))
    assert len({r["response"] for r in rows}) == 4
    # chat API: the server applies the template; same prompt text stored, same samples drawn
    generate(model, probs, tmp_path / "c.jsonl", backend_kwargs={"api": "chat"}, **kw)
    key = lambda r: (r["problem_id"], r["sample"])  # noqa: E731
    assert sorted(_lines(tmp_path / "c.jsonl"), key=key) == sorted(rows, key=key)


def test_openai_rejected_request_is_clear(server, tmp_path, tiny_model_dir):
    with pytest.raises(GenerationError, match="HTTP 404.*not served"):
        generate(
            str(tiny_model_dir),
            arith_problems(1),
            tmp_path / "x.jsonl",
            generator="openai",
            server=server,
            n=1,
            max_new_tokens=4,
            progress=False,
            backend_kwargs={"served_model_name": "other"},
        )
    assert (tmp_path / "x.jsonl").read_text() == ""


def test_unreachable_server(tmp_path, tiny_model_dir):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = tmp_path / "t.jsonl"
    with pytest.raises(GenerationError, match=r"after 3 attempts .*server"):
        generate(str(tiny_model_dir), arith_problems(2), out, generator="openai", n=2,
                 server=f"http://127.0.0.1:{port}", max_new_tokens=4, progress=False,
                 backend_kwargs={"max_retries": 2})
    assert out.read_text() == ""  # no half-written line
    with pytest.raises(DataError, match="needs --server"):
        generate(
            str(tiny_model_dir),
            arith_problems(1),
            tmp_path / "u.jsonl",
            generator="openai",
            progress=False,
        )
    assert not (tmp_path / "u.jsonl").exists()


def test_openai_via_cli(server, tiny_model_dir, tmp_path):
    import argparse

    from ssgr.data.cli import register

    parser = argparse.ArgumentParser(prog="ssgr")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "t.jsonl"
    args = parser.parse_args(
        [
            "generate",
            str(tiny_model_dir),
            "--problems",
            "builtin:arith?n=3",
            "--limit",
            "2",
            "--out",
            str(out),
            "--generator",
            "openai",
            "--server",
            server + "/v1/",
            "--api",
            "chat",
            "--tokenizer",
            str(tiny_model_dir),
            "--n",
            "1",
            "--max-new-tokens",
            "6",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    rows = _lines(out)
    # requests run concurrently: lines are appended in completion order
    assert sorted(r["problem_id"] for r in rows) == ["arith-0-00000", "arith-0-00001"]
    assert all(r["prompt"].endswith("<think>\n") and r["num_tokens"] <= 6 for r in rows)


@pytest.mark.parametrize("bad", ["text", "tokens-negative", "tokens-string"])
def test_invalid_response_fields_are_retried_then_named(server, tiny_model_dir, tmp_path, bad):
    """#19 item 9: `text` a number, `completion_tokens` -5 (the issue's) and "many" (sibling):
    retried, then an error naming the server URL and the field; no line written."""
    out = tmp_path / "t.jsonl"
    field = "choices[0].text" if bad == "text" else "usage.completion_tokens"
    import re

    msg = f"server {server}/v1/completions returned an invalid {field}"
    with pytest.raises(GenerationError, match=re.escape(msg)):
        generate(
            f"{tiny_model_dir}#bad={bad}", arith_problems(1, seed=0), out, generator="openai",
            server=server, n=1, max_new_tokens=4, progress=False,
            backend_kwargs={"tokenizer": str(tiny_model_dir), "max_retries": 1},
        )
    assert not out.exists() or out.read_text() == ""


def test_server_that_never_answers_warns_then_fails(tmp_path, tiny_model_dir, caplog):
    """#19 item 10: a server that accepts and never answers: periodic "still waiting for URL"
    warnings, then a clear error after --request-timeout (the issue's: accept and stay silent;
    sibling: the same with two concurrent requests)."""
    from ssgr.data.backends.openai import OpenAIBackend

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # connections complete in the backlog; nothing ever answers
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        backend = OpenAIBackend(str(tiny_model_dir), server=url, tokenizer=str(tiny_model_dir),
                                max_retries=0, request_timeout=1.5, wait_warning_s=0.5,
                                concurrency=2)
        with pytest.raises(GenerationError, match="could not get a response"):
            generate(str(tiny_model_dir), arith_problems(1, seed=0), tmp_path / "t.jsonl",
                     generator="openai", server=url, n=2, max_new_tokens=4, progress=False,
                     backend_obj=backend)
        backend.close()
    finally:
        sock.close()
    assert f"still waiting for {url}/v1" in caplog.text
