"""``ssgr generate`` under torchrun (issue #17): problems sharded over ranks, one part file each,
merged by rank 0 into the TRACES.jsonl one process writes; resumable at every point."""

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from ssgr.data.errors import DataError
from ssgr.data.generate import generate, meta_path
from ssgr.data.problems import arith_problems, write_problems
from ssgr.data.shard import (
    dist_env,
    generate_sharded,
    part_files,
    part_path,
    rank_logging,
    shard_problems,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, TOKENS = 2, 12


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _dist_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _rank_main(rank, world, port, model, problems, out, kill_after):
    """One torchrun-like rank: the torchrun environment, then `ssgr generate`'s function.
    ``kill_after``: this rank SIGKILLs itself once its part file has that many lines."""
    import torch

    from ssgr.data.cli import GenerateConfig, generate_command

    torch.set_num_threads(1)
    os.environ.update(_dist_env(rank, world, port))
    if kill_after is not None:
        part = part_path(out, rank, world)

        def watch():
            while True:
                if part.exists() and part.read_bytes().count(b"\n") >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.002)

        threading.Thread(target=watch, daemon=True).start()
    generate_command(GenerateConfig(model=model, problems=problems, out=out, n=N,
                                    max_new_tokens=TOKENS, progress=False, dist_timeout=120))


def _worker(rank, world, port, model, problems, out, kill_rank):
    _rank_main(rank, world, port, model, problems, out, 1 if rank == kill_rank else None)


def _spawn(world, *args):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), *args), nprocs=world, join=True)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """6 problems x 2 samples written by one process."""
    d = tmp_path_factory.mktemp("shard-ref")
    probs = arith_problems(6, seed=3)
    write_problems(d / "p.jsonl", probs)
    generate(str(tiny_model_dir), str(d / "p.jsonl"), d / "ref.jsonl", n=N,
             max_new_tokens=TOKENS, progress=False)
    return d / "p.jsonl", (d / "ref.jsonl").read_text()


def test_two_ranks_equal_one_process_and_resume_after_a_killed_rank(
    tiny_model_dir, reference, tmp_path
):
    """2 ranks (torch.multiprocessing spawn, gloo): rank 1 killed (SIGKILL) mid-run, then the
    same command again: the killed rank's part resumes, rank 0 merges, and TRACES.jsonl equals
    the one-process file line for line; a rerun after the merge changes nothing."""
    import torch.multiprocessing as mp

    problems, ref = reference
    out = tmp_path / "t.jsonl"
    with pytest.raises(mp.ProcessExitedException):
        _spawn(2, str(tiny_model_dir), str(problems), str(out), 1)
    assert not out.exists() or out.read_text() == ""  # nothing merged
    killed = part_path(out, 1, 2).read_text().splitlines()
    assert 1 <= len(killed) < 3 * N  # killed mid-run, its finished lines kept
    _spawn(2, str(tiny_model_dir), str(problems), str(out), None)
    assert out.read_text() == ref  # same lines, same order
    assert part_files(out) == [] and json.loads(meta_path(out).read_text())["problems"] == str(
        problems
    )
    assert all(line in ref.splitlines() for line in killed)
    # a rerun after the merge is a no-op; other settings are refused as in a plain rerun
    before = out.read_bytes(), meta_path(out).read_bytes()
    kw = dict(world_size=2, n=N, max_new_tokens=TOKENS, progress=False)
    for rank in (1, 0):
        st = generate_sharded(str(tiny_model_dir), str(problems), out, rank=rank, **kw)
        assert st.written == 0 and st.skipped == 6 * N
    assert (out.read_bytes(), meta_path(out).read_bytes()) == before and part_files(out) == []
    with pytest.raises(DataError, match="temperature"):
        generate_sharded(str(tiny_model_dir), str(problems), out, rank=0, temperature=0.9, **kw)


def test_stale_parts_and_out_lines_are_reused_not_regenerated(
    tiny_model_dir, reference, tmp_path, monkeypatch
):
    """OUT with the first problem and a part file of a run with 3 ranks holding another
    sample: both are kept as they are (a marked response proves the sample was not generated
    again) and merged in problem order after OUT's lines; one rank with a gloo group."""
    problems, ref = reference
    lines = ref.splitlines()
    out = tmp_path / "t.jsonl"
    out.write_text("\n".join(lines[:N]) + "\n")
    meta_path(out).write_text(meta_path(problems.parent / "ref.jsonl").read_text())
    stale = json.loads(lines[3])
    stale["response"] = "MARKED"
    part_path(out, 2, 3).write_text(json.dumps(stale) + "\n" + '{"problem_id": "arith')  # torn
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    st = generate_sharded(str(tiny_model_dir), str(problems), out, rank=0, world_size=1, n=N,
                          max_new_tokens=TOKENS, progress=False)
    got = out.read_text().splitlines()
    want = lines[:3] + [json.dumps(stale)] + lines[4:]
    assert got == want and st.written == len(lines) - N and part_files(out) == []


def test_dist_env_shards_and_rank_logging(monkeypatch, caplog):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert dist_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert dist_env() is None  # one process: the plain path
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert dist_env() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(DataError, match="outside WORLD_SIZE=4"):
        dist_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(DataError, match="not integers"):
        dist_env()
    probs = arith_problems(5)
    shards = [shard_problems(probs, r, 2) for r in range(2)]
    assert [p.id for p in shards[0]] == [probs[i].id for i in (0, 2, 4)]
    assert sorted(p.id for s in shards for p in s) == sorted(p.id for p in probs)
    assert shard_problems(probs[:1], 1, 2) == []  # more ranks than problems
    assert part_path("/x/T.jsonl", 1, 2) == Path("/x/T.jsonl.rank1-of-2.part")
    log = logging.getLogger("ssgr.data.shard")
    with caplog.at_level(logging.INFO):
        with rank_logging(1, 2):
            log.info("hidden")
            log.warning("shown")
        with rank_logging(0, 2):
            log.info("kept")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["[rank 1/2] shown", "[rank 0/2] kept"]
