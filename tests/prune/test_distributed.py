"""``ssgr prune`` under torchrun (issue #17): 2 CPU ranks on a gloo group give the single-process
result to fp32 rounding; a failing rank stops every rank with its error; ``--resume`` continues
from the per-rank activation checkpoints (under torchrun, or under another world size).

One ``torch.distributed.run --nproc-per-node 2`` subprocess runs every distributed job in one
process group (the worker initialises it, so ssgr keeps it open between jobs): starting Python,
torch and transformers twice per job would cost more than the pruning of these tiny models.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from _prune_helpers import random_calib, tiny_model
from safetensors.torch import load_file

from ssgr.prune.dist import split_by_tokens
from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import PruneError
from ssgr.prune.orders import assign_work
from ssgr.prune.state import RunState
from ssgr.prune.store import ActivationStore

#: The uneven split: one long sequence and two short ones over 2 ranks -> [0] and [1, 2]
#: (rank 1's first sequence is longer than the structure probe).
LENGTHS = [200, 60, 9]

WORKER = textwrap.dedent('''
    import json, logging, os, signal, sys
    import torch
    import torch.distributed as dist
    from ssgr.prune import orders, store
    from ssgr.prune.engine import PruneConfig, prune_model
    from ssgr.prune.errors import ActivationError

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ok_check = orders.LayerContext.check_finite

    def failing(self, y, i, what):
        if self.li == 1:
            raise ActivationError(f"injected failure on layer {self.li}")
        return ok_check(self, y, i, what)

    def killed(self, y, i, what):  # SIGKILL in the middle of layer 1's forward passes
        if self.li == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return ok_check(self, y, i, what)

    ok_save = store.save_raw
    kill_file = None

    def save_raw(t, path):  # SIGKILL before writing the file kill_file
        if kill_file is not None and str(path).endswith(kill_file):
            os.kill(os.getpid(), signal.SIGKILL)
        return ok_save(t, path)

    store.save_raw = save_raw

    for job in json.load(open(sys.argv[1])):
        orders.LayerContext.check_finite = (
            failing if job.get("fail_rank") == rank
            else killed if job.get("kill_rank") == rank else ok_check)
        kill_file = job.get("kill_file") if job.get("kill_file_rank") == rank else None
        try:
            rep = prune_model(PruneConfig(**job["cfg"]))
            res = {"ok": True, "distributed": rep["distributed"],
                   "breakdown": rep["totals"]["breakdown_s"], "tokens": rep["tokens"],
                   "resumed": rep["resumed_from_layer"]}
        except Exception as exc:
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with open(f"{job['result']}.rank{rank}.json", "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()
''')


def _torchrun(tmp_path, jobs: list[dict], timeout: float) -> subprocess.CompletedProcess:
    """The WORKER over ``jobs`` on 2 ranks (one torchrun, one gloo group)."""
    name = f"jobs{len(list(tmp_path.glob('jobs*.json')))}.json"
    (tmp_path / name).write_text(json.dumps(jobs))
    (tmp_path / "worker.py").write_text(WORKER)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         str(tmp_path / "worker.py"), str(tmp_path / name)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(out) -> dict[str, torch.Tensor]:
    sd = {}
    for f in sorted(out.glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def _same(single, multi) -> None:
    """Weights allclose (fp32 rounding of the summed statistics), masks equal except near-ties
    (at most 0.5% of a module's entries)."""
    a, b = _weights(single), _weights(multi)
    assert a.keys() == b.keys()
    for k in a:
        wa, wb = a[k], b[k]
        if wa.dim() != 2 or ".layers." not in k:
            assert torch.equal(wa, wb), k
            continue
        diff = ((wa == 0) != (wb == 0)).float().mean().item()
        assert diff <= 0.005, f"{k}: masks differ on {diff:.2%}"
        agree = (wa == 0) == (wb == 0)
        torch.testing.assert_close(wa[agree.all(1)], wb[agree.all(1)], atol=1e-4, rtol=1e-4,
                                   msg=k)


def test_split_by_tokens_longest_first_into_lightest_rank():
    assert split_by_tokens(LENGTHS, 2) == [[0], [1, 2]]
    assert split_by_tokens([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    assert split_by_tokens([3, 9, 4, 8, 1], 3) == [[1], [3], [0, 2, 4]]  # 9 | 8 | 4+3+1
    assert split_by_tokens([7], 3) == [[0], [], []]
    assert split_by_tokens([], 2) == [[], []]


def test_assign_work_spreads_cost_over_ranks():
    # q (64x64), k, v (32x64): cost cols^3 + rows*cols^2 -> q alone on rank 0, k and v on rank 1
    costs = [64**3 + 64 * 64**2, 64**3 + 32 * 64**2, 64**3 + 32 * 64**2]
    assert assign_work(costs, 2) == [0, 1, 1]
    assert assign_work(costs, 1) == [0, 0, 0]
    assert assign_work([5, 5], 4) == [0, 1]


JOBS = [  # (family, method, order, sparsity)
    ("llama", "sparsegpt", "layer", "0.5"),
    ("llama", "wanda", "module", "2:4"),
    ("qwen2", "sparsegpt", "module", "2:4"),
    ("qwen2", "wanda", "layer", "0.5"),
]


@pytest.mark.timeout(300)
def test_two_ranks_equal_single_process_and_failure_stops_all(tmp_path):
    calib = random_calib(tmp_path / "calib.jsonl", LENGTHS)
    models = {f: tiny_model(f, tmp_path / f) for f in ("llama", "qwen2")}

    def cfg(family, method, order, sparsity, out, **kw):
        return dict(model=str(models[family]), calib=str(calib), out=str(out), device="cpu",
                    method=method, sequential=order, sparsity=sparsity, **kw)

    jobs = [{"cfg": cfg(*j, tmp_path / f"dist{i}"), "result": str(tmp_path / f"dist{i}")}
            for i, j in enumerate(JOBS)]
    # rank 1 fails in layer 1: both ranks stop with its error; then --resume finishes
    fail = cfg(*JOBS[0], tmp_path / "fail")
    jobs.append({"cfg": fail, "fail_rank": 1, "result": str(tmp_path / "fail")})
    jobs.append({"cfg": {**fail, "resume": True}, "result": str(tmp_path / "resume")})
    # one sequence over 2 ranks: rank 1 runs only a probe
    # one sequence over 2 ranks: rank 1 runs only a probe; failing in layer 1, then resumed
    # from the checkpoint (rank 1's probe from the first tokens of sequence 0)
    one = random_calib(tmp_path / "one.jsonl", [40])
    one_cfg = {**cfg(*JOBS[1], tmp_path / "one"), "calib": str(one)}
    jobs.append({"cfg": one_cfg, "fail_rank": 0, "result": str(tmp_path / "one_fail")})
    jobs.append({"cfg": {**one_cfg, "resume": True}, "result": str(tmp_path / "one")})
    proc = _torchrun(tmp_path, jobs, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]

    def result(out, rank):
        return json.loads((tmp_path / f"{out}.rank{rank}.json").read_text())

    for i, j in enumerate(JOBS):
        single = tmp_path / f"single{i}"
        prune_model(PruneConfig(**cfg(*j, single)))
        r0, r1 = result(f"dist{i}", 0), result(f"dist{i}", 1)
        assert r0["ok"] and r1["ok"], (r0, r1)
        ranks = r0["distributed"]["ranks"]
        assert [r["tokens"] for r in ranks] == [200, 69]
        assert r0["tokens"] == sum(LENGTHS)  # the report counts the global calibration set
        assert "allreduce" in r0["breakdown"]
        assert not (tmp_path / f"dist{i}" / ".ssgr_state").exists()
        _same(single, tmp_path / f"dist{i}")
    e0, e1 = result("fail", 0), result("fail", 1)
    assert not e0["ok"] and not e1["ok"]
    assert e1["error"].startswith("ActivationError: injected failure on layer 1")
    assert e0["error"].startswith("DistError: rank 1 failed in layer 1")
    assert "injected failure" in e0["error"]
    assert result("resume", 0)["ok"] and result("resume", 1)["ok"]
    assert result("resume", 0)["resumed"] == 1  # from the checkpoint after layer 0
    _same(tmp_path / "single0", tmp_path / "fail")
    assert result("one_fail", 0)["error"].startswith("ActivationError: injected failure")
    r0 = result("one", 0)
    assert r0["ok"] and result("one", 1)["ok"] and r0["resumed"] == 1
    assert [r["tokens"] for r in r0["distributed"]["ranks"]] == [40, 0]
    prune_model(PruneConfig(**{**cfg(*JOBS[1], tmp_path / "one_single"), "calib": str(one)}))
    _same(tmp_path / "one_single", tmp_path / "one")


@pytest.mark.timeout(300)
def test_a_rank_killed_mid_layer_stops_the_run_and_resume_finishes(tmp_path):
    """Rank 1 gets SIGKILL in the middle of layer 1: the run ends (torchrun stops rank 0 too:
    no hang) with a non-zero status naming the killed rank and its signal, leaving no finished
    output but the checkpoint of layer 1 (every rank's part); ``--resume`` under torchrun
    continues from layer 1 and finishes with the single-process weights."""
    calib = random_calib(tmp_path / "calib.jsonl", LENGTHS)
    model = tiny_model("llama", tmp_path / "llama")
    cfg = dict(model=str(model), calib=str(calib), out=str(tmp_path / "out"), device="cpu",
               method="sparsegpt", sequential="module", sparsity="2:4")
    proc = _torchrun(tmp_path, [{"cfg": cfg, "kill_rank": 1, "result": str(tmp_path / "k")}],
                     timeout=150)
    assert proc.returncode != 0
    assert "SIGKILL" in proc.stderr or "Signal 9" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "k.rank1.json").exists()  # rank 1 never got past the kill
    out = tmp_path / "out"
    assert not (out / "prune_report.json").exists()
    state = json.loads((out / ".ssgr_state" / "state.json").read_text())
    assert (state["ckpt_layer"], state["world_size"]) == (1, 2)
    parts = {p.name: sorted(f.name for f in p.glob("*.bin"))
             for p in (out / ".ssgr_state" / "acts" / "L1").iterdir()}
    assert parts == {"rank0": ["0.bin"], "rank1": ["1.bin", "2.bin"]}  # global numbers
    proc = _torchrun(tmp_path, [{"cfg": {**cfg, "resume": True}, "result": str(tmp_path / "r")}],
                     timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[rank 0/2] resuming" in proc.stderr and "at layer 1" in proc.stderr, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "r.rank0.json").read_text())
    assert r0["ok"] and r0["resumed"] == 1
    assert not (out / ".ssgr_state").exists()
    prune_model(PruneConfig(**{**cfg, "out": str(tmp_path / "single")}))
    _same(tmp_path / "single", out)


@pytest.mark.timeout(300)
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one_on_one_process(
        tmp_path, caplog):
    """Rank 1 gets SIGKILL while writing its part of the checkpoint of layer 2 (3 layers):
    ``state.json`` still names layer 1, whose parts are complete. A single process (another
    world size) resumes it: the sequences re-split, from layer 1, a WARNING naming both sizes,
    the single-process weights; the stale layer-2 parts and the state folder are removed, a
    file ssgr did not write is kept."""
    calib = random_calib(tmp_path / "calib.jsonl", LENGTHS)
    model = tiny_model("llama", tmp_path / "llama", num_hidden_layers=3)
    out = tmp_path / "out"
    cfg = dict(model=str(model), calib=str(calib), out=str(out), device="cpu",
               method="sparsegpt", sequential="layer", sparsity="0.5")
    proc = _torchrun(tmp_path, [{"cfg": cfg, "kill_file_rank": 1,
                                 "kill_file": "acts/L2/rank1.tmp/2.bin",
                                 "result": str(tmp_path / "k")}], timeout=150)
    assert proc.returncode != 0
    assert "SIGKILL" in proc.stderr or "Signal 9" in proc.stderr, proc.stderr[-3000:]
    state_dir = out / ".ssgr_state"
    assert json.loads((state_dir / "state.json").read_text())["ckpt_layer"] == 1
    assert (state_dir / "acts" / "L1" / "rank1" / "meta.json").is_file()
    assert (state_dir / "acts" / "L2" / "rank1.tmp" / "1.bin").is_file()  # torn, unrecorded
    (out / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="ssgr.prune"):
        rep = prune_model(PruneConfig(**{**cfg, "resume": True}))
    assert rep["resumed_from_layer"] == 1
    assert any("checkpointed by 2 rank(s) and resumes on 1" in r.getMessage()
               for r in caplog.records), caplog.text
    assert not state_dir.exists() and (out / "notes.txt").read_text() == "mine"
    prune_model(PruneConfig(**{**cfg, "out": str(tmp_path / "single")}))
    _same(tmp_path / "single", out)


def test_checkpoint_parts_restore_under_any_split(tmp_path, caplog):
    """The parts of 2 ranks, keyed by global sequence number, restore under 1, 3 and 4 ranks
    (a rank without a sequence gets its probe from the first tokens of sequence 0); a missing
    part is not recorded (WARNING) and refuses to restore; the one-folder layout of earlier
    ssgr restores too."""
    tokens = [5, 3, 2]
    xs = [torch.randn(1, t, 4) for t in tokens]

    def part(world, rank, layer=1):
        share = split_by_tokens(tokens, world)[rank]
        st = ActivationStore("cpu", torch.device("cpu"))
        for i, g in enumerate(share):
            st.put("in", i, xs[g])
        RunState(tmp_path, {}, 3, 3, rank, world).save_part(st, "in", layer, share)

    part(2, 0)
    with caplog.at_level(logging.WARNING, logger="ssgr.prune"):
        assert not RunState(tmp_path, {}, 3, 3).commit(1)  # rank 1's part is missing
    assert "lacks 2 of 3 sequences" in caplog.text
    assert not (tmp_path / ".ssgr_state" / "state.json").exists()
    with pytest.raises(PruneError, match="lacks 2 of 3 sequences"):
        RunState(tmp_path, {}, 3, 3).restore(ActivationStore("cpu", "cpu"), "in", 1, [0], [5])
    part(2, 1)
    assert RunState(tmp_path, {}, 3, 3, 0, 2).commit(1)
    assert json.loads((tmp_path / ".ssgr_state" / "state.json").read_text())["ckpt_layer"] == 1
    for world in (1, 3, 4):
        for rank, share in enumerate(split_by_tokens(tokens, world)):
            st = ActivationStore("cpu", torch.device("cpu"))
            want = [xs[g] for g in share] or [xs[0][:, :2]]  # no sequence: a 2-token probe
            RunState(tmp_path, {}, 3, 3, rank, world).restore(
                st, "in", 1, share, [x.shape[1] for x in want])
            for i, x in enumerate(want):
                assert torch.equal(st.get("in", i), x), (world, rank, i)
    with pytest.raises(PruneError, match="3 tokens saved for calibration sequence 1"):
        RunState(tmp_path, {}, 3, 3).restore(ActivationStore("cpu", "cpu"), "in", 1, [1], [4])
    old = ActivationStore("cpu", torch.device("cpu"))  # one folder, meta.json a list
    for i, x in enumerate(xs):
        old.put("in", i, x)
    legacy = tmp_path / ".ssgr_state" / "acts" / "L2"
    old.save_slot("in", legacy, 3)
    meta = json.loads((legacy / "meta.json").read_text())
    (legacy / "meta.json").write_text(json.dumps(meta["tensors"]))
    st = ActivationStore("cpu", torch.device("cpu"))
    RunState(tmp_path, {}, 3, 3).restore(st, "in", 2, [0, 1, 2], tokens)
    assert all(torch.equal(st.get("in", i), xs[i]) for i in range(3))
