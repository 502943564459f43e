"""Generation over several OpenAI-compatible servers (issue #17, "Generation at scale"): least
outstanding requests, a server killed mid-run, every server down then a resumed rerun."""

import collections
import json
import logging
import socket
from pathlib import Path

import pytest
from openai_server import start_servers, stop_server

from ssgr.data.backends.openai import OpenAIBackend, Server, least_outstanding, parse_servers
from ssgr.data.errors import DataError, GenerationError
from ssgr.data.generate import generate
from ssgr.data.problems import arith_problems

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 2  # samples per problem


@pytest.fixture(scope="module")
def servers(tiny_model_dir):
    """A live server and one that dies abruptly when its 3rd request arrives (both with a
    0.2 s delay per request, so requests overlap), started together."""
    common = ["--idle-timeout", "120", "--delay", "0.2"]
    started = start_servers(tiny_model_dir, common, [*common, "--die-after", "2"])
    try:
        yield [url for _, url in started]
    finally:
        for proc, _ in started:
            stop_server(proc)


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _keys(path):
    rows = map(json.loads, Path(path).read_text().splitlines())
    return [(r["problem_id"], r["sample"]) for r in rows]


def _exactly_once(path, probs):
    counts = collections.Counter(_keys(path))
    assert set(counts) == {(p.id, s) for p in probs for s in range(N)}
    assert set(counts.values()) == {1}, [k for k, c in counts.items() if c > 1]


def _backend(model_dir, servers, **kw):
    kw = {"max_retries": 1, "request_timeout": 30, "max_new_tokens": 8, **kw}
    return OpenAIBackend(str(model_dir), server=servers, tokenizer=str(model_dir), **kw)


def test_parse_servers_and_least_outstanding():
    assert parse_servers("http://a:1, http://b:2/v1/") == ["http://a:1/v1", "http://b:2/v1"]
    assert parse_servers(["http://a:1", "http://b:2,http://c:3"])[2] == "http://c:3/v1"
    with pytest.raises(DataError, match="more than once"):
        parse_servers(["http://a:1", "http://a:1/v1"])
    with pytest.raises(DataError, match="needs --server"):
        parse_servers(" , ")
    a, b, c = (Server(u, None) for u in "abc")
    assert least_outstanding([a, b, c]) is a  # ties: the first listed
    a.outstanding, b.outstanding, c.outstanding = 2, 1, 1
    assert least_outstanding([a, b, c]) is b
    b.error = GenerationError("x")
    assert least_outstanding([a, b, c]) is c
    assert least_outstanding([a, b, c], cap=1) is None  # every live server is full


def test_server_killed_mid_run_loses_and_duplicates_nothing(servers, tiny_model_dir, tmp_path,
                                                            caplog):
    """Two servers, one killed mid-run with requests in flight: they are retried on the other,
    every (problem, sample) is written exactly once, the lines equal a one-server run, both
    servers got work (least outstanding), and a WARNING names the dead server."""
    probs = arith_problems(4, seed=1)
    live_server, dying = servers  # dying: answers 2 requests, dies when the 3rd arrives
    model = str(tiny_model_dir)
    kw = dict(generator="openai", n=N, max_new_tokens=8, progress=False)
    backend = _backend(tiny_model_dir, [dying, live_server], concurrency=4,
                       concurrency_per_server=2)
    with caplog.at_level(logging.WARNING):
        st = generate(model, probs, tmp_path / "two.jsonl", server=dying, backend_obj=backend,
                      **kw)
    backend.close()
    assert st.written == len(probs) * N
    _exactly_once(tmp_path / "two.jsonl", probs)
    first, second = backend.servers
    assert first.down and not second.down
    assert 1 <= first.completed <= 2 and first.completed + second.completed == st.written
    assert f"server {dying}/v1 is down" in caplog.text
    # the same samples as one live server alone (per-sample seeds; the server is seeded per
    # request), in any order
    generate(model, probs, tmp_path / "one.jsonl", server=live_server,
             backend_kwargs={"max_retries": 1}, **kw)
    lines = lambda p: sorted(Path(p).read_text().splitlines())  # noqa: E731
    assert lines(tmp_path / "two.jsonl") == lines(tmp_path / "one.jsonl")


def test_server_failing_with_5xx_is_marked_down(servers, tiny_model_dir, tmp_path, caplog):
    """A server answering HTTP 503 (after the client's retries) is taken out of the rotation;
    the other serves every request."""
    bad = servers[0] + "/status-503"
    backend = _backend(tiny_model_dir, [bad, servers[0]], concurrency=4, max_retries=0)
    with caplog.at_level(logging.WARNING):
        st = generate(str(tiny_model_dir), arith_problems(2, seed=4), tmp_path / "t.jsonl",
                      generator="openai", server=bad, n=N, progress=False, backend_obj=backend)
    backend.close()
    assert st.written == 2 * N and backend.servers[1].completed == 2 * N
    assert f"server {bad}/v1 is down (HTTP 503)" in caplog.text


def test_all_servers_down_is_clear_then_a_rerun_resumes(servers, tiny_model_dir, tmp_path):
    """Every server down: a clear error naming each; the samples finished before stay, and a
    rerun with a live server (a repeated, comma-separated --server through the command line)
    completes the file, every (problem, sample) once."""
    from ssgr.data.problems import write_problems

    live_server = servers[0]
    probs = arith_problems(3, seed=2)
    write_problems(tmp_path / "p.jsonl", probs)
    out = tmp_path / "t.jsonl"
    kw = dict(generator="openai", n=N, max_new_tokens=8, progress=False)
    generate(str(tiny_model_dir), probs[:1], out, server=live_server, **kw)  # a first problem
    before = _keys(out)
    dead1, dead2 = _dead_url(), _dead_url()
    with pytest.raises(GenerationError, match="all 2 OpenAI-compatible servers are down") as ei:
        generate(str(tiny_model_dir), probs, out, server=f"{dead1},{dead2}",
                 backend_kwargs={"max_retries": 0}, **kw)
    msg = str(ei.value)
    assert f"{dead1}/v1 (ConnectError" in msg and f"{dead2}/v1 (ConnectError" in msg
    assert "4 sample(s) were not generated" in msg and "rerun the same command" in msg
    assert _keys(out) == before
    from ssgr.cli import main

    rc = main(["generate", str(tiny_model_dir), "--problems", str(tmp_path / "p.jsonl"),
               "--out", str(out), "--generator", "openai", "--server", f"{dead1},{live_server}",
               "--server", dead2, "--n", str(N), "--max-new-tokens", "8", "--max-retries", "0",
               "--concurrency-per-server", "2", "--no-progress"])
    assert rc == 0
    _exactly_once(out, probs)
    assert _keys(out)[: len(before)] == before  # finished samples kept as they were


def test_generator_options_reach_their_backend_or_are_refused(tiny_model_dir, tmp_path):
    """--tensor-parallel-size / --data-parallel-size reach the vllm backend (validated there
    before vLLM is imported; without vLLM: the MissingPackageError naming the extra); generator
    options given to another generator are refused."""
    from ssgr.cli import main
    from ssgr.data.backends.vllm import VLLMBackend, parallel_kwargs
    from ssgr.errors import MissingPackageError

    assert parallel_kwargs(2, 4) == {"tensor_parallel_size": 2, "data_parallel_size": 4}
    assert parallel_kwargs() == {}
    with pytest.raises(DataError, match="--data-parallel-size must be an integer >= 1"):
        VLLMBackend("m", data_parallel_size=0)
    base = ["generate", str(tiny_model_dir), "--problems", "builtin:arith?n=1", "--n", "1",
            "--no-progress"]
    from ssgr.data.cli import GenerateConfig, generate_command

    def run(**kw):
        return generate_command(GenerateConfig(model=str(tiny_model_dir), n=1, progress=False,
                                               problems="builtin:arith?n=1", **kw))

    with pytest.raises(DataError, match="--tensor-parallel-size must be an integer >= 1"):
        run(out=str(tmp_path / "a.jsonl"), generator="vllm", tensor_parallel_size=0)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingPackageError, match=r"ssgr\[vllm\]"):
            run(out=str(tmp_path / "b.jsonl"), generator="vllm", tensor_parallel_size=2,
                data_parallel_size=2)
    with pytest.raises(DataError, match="--tensor-parallel-size is for --generator vllm"):
        run(out=str(tmp_path / "c.jsonl"), generator="openai", server="http://a:1",
            tensor_parallel_size=2)
    assert main([*base, "--out", str(tmp_path / "d.jsonl"), "--concurrency-per-server", "2"]) == 2
    with pytest.raises(DataError, match="--concurrency-per-server must be >= 1"):
        OpenAIBackend(str(tiny_model_dir), server="http://a:1", concurrency_per_server=0)
    assert all(p.read_text() == "" for p in tmp_path.glob("*.jsonl"))  # nothing generated
