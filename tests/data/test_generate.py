import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssgr.data.errors import DataError
from ssgr.data.generate import generate, sample_seed
from ssgr.data.problems import arith_problems, write_problems
from ssgr.data.traces import TRACE_FIELDS, read_traces
from ssgr.data.verify import check_response

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _by_key(path):
    return {(r["problem_id"], r["sample"]): r for r in _lines(path)}


def test_generate_mechanics(tiny_model_dir, tmp_path):
    out = tmp_path / "traces.jsonl"
    probs = arith_problems(3)
    st = generate(
        str(tiny_model_dir), probs, out, n=4, max_new_tokens=16, batch_size=5, progress=False
    )
    assert (st.written, st.skipped, st.samples_total) == (12, 0, 12)
    rows = _lines(out)
    assert len(rows) == 12
    assert {(r["problem_id"], r["sample"]) for r in rows} == {
        (p.id, s) for p in probs for s in range(4)
    }
    reasons = set()
    for r in rows:
        assert list(r) == list(TRACE_FIELDS)
        assert r["prompt"].startswith("<|im_start|>user\nWhat is ")
        assert r["prompt"].endswith("<|im_start|>assistant\n<think>\n")
        assert "\\boxed{}" in r["prompt"]
        assert 1 <= r["num_tokens"] <= 16
        reasons.add(r["finish_reason"])
        if r["finish_reason"] == "length":
            assert r["num_tokens"] == 16 and "truncated" in r["flags"]
        else:
            assert "truncated" not in r["flags"]
        gold = next(p.answer for p in probs if p.id == r["problem_id"])
        v = check_response(r["response"], gold, r["finish_reason"], r["prompt"])
        assert (r["answer"], r["correct"], r["flags"]) == (v.answer, v.correct, v.flags)
    assert reasons == {"stop", "length"}  # the boosted EOS makes both happen
    meta = json.loads((tmp_path / "traces.jsonl.meta.json").read_text())
    assert meta["n"] == 4 and meta["seed"] == 0 and meta["temperature"] == 0.6
    # restart: nothing to do, nothing duplicated
    st = generate(str(tiny_model_dir), probs, out, n=4, max_new_tokens=16, progress=False)
    assert (st.written, st.skipped) == (0, 12) and len(_lines(out)) == 12
    # more samples per problem: only the new ones are generated
    st = generate(str(tiny_model_dir), probs, out, n=5, max_new_tokens=16, progress=False)
    assert (st.written, st.skipped) == (3, 12)
    assert len(read_traces(out)) == 15
    with pytest.raises(DataError, match="temperature=0.6 but this run has temperature=0.7"):
        generate(
            str(tiny_model_dir), probs, out, n=4, temperature=0.7, max_new_tokens=16, progress=False
        )


def test_seeds_per_sample_independent_of_batch(tiny_model_dir, tmp_path):
    probs = arith_problems(2)
    kw = dict(n=3, max_new_tokens=12, progress=False)
    generate(str(tiny_model_dir), probs, tmp_path / "a.jsonl", batch_size=1, **kw)
    generate(str(tiny_model_dir), probs, tmp_path / "b.jsonl", batch_size=6, **kw)
    generate(str(tiny_model_dir), probs, tmp_path / "c.jsonl", batch_size=6, seed=1, **kw)
    a, b, c = (
        _by_key(tmp_path / "a.jsonl"),
        _by_key(tmp_path / "b.jsonl"),
        _by_key(tmp_path / "c.jsonl"),
    )
    assert a == b
    assert len({r["response"] for r in a.values()}) == 6  # samples differ from each other
    assert sum(a[k]["response"] != c[k]["response"] for k in a) >= 5
    assert sample_seed(0, "p", 1) == sample_seed(0, "p", 1) != sample_seed(0, "p", 2)


def test_greedy_matches_transformers(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    probs = arith_problems(2)  # prompts of different lengths: left padding in one batch
    out = tmp_path / "g.jsonl"
    generate(str(tiny_model_dir), probs, out, n=1, temperature=0.0, max_new_tokens=10, batch_size=2,
             progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for r in _lines(out):
        ids = tok(r["prompt"], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ref = model.generate(
                **ids, do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id
            )
        new = ref[0, ids["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert r["response"] == tok.decode(new, skip_special_tokens=True)


def test_sample_next_top_p():
    import torch

    from ssgr.data.backends.hf import sample_next

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    gens = [torch.Generator().manual_seed(i) for i in range(1)]
    draws = {int(sample_next(logits, gens, 1.0, 0.5)[0]) for _ in range(50)}
    assert draws == {0}
    draws = {int(sample_next(logits, gens, 1.0, 0.8)[0]) for _ in range(200)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, gens, 1.0, 1.0)[0]) for _ in range(400)}
    assert draws == {0, 1, 2, 3}
    assert int(sample_next(logits, gens, 0.0, 0.5)[0]) == 0


def test_partial_line_resume(tiny_model_dir, tmp_path):
    probs = arith_problems(2)
    kw = dict(n=2, max_new_tokens=12, progress=False)
    ref = tmp_path / "ref.jsonl"
    generate(str(tiny_model_dir), probs, ref, **kw)
    out = tmp_path / "out.jsonl"
    data = ref.read_bytes()
    out.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 40])  # 3 lines + part of the 4th
    st = generate(str(tiny_model_dir), probs, out, **kw)
    assert (st.skipped, st.written) == (3, 1)
    assert out.read_bytes() == data


def test_resume_after_kill(tiny_model_dir, tmp_path):
    probs_path = tmp_path / "p.jsonl"
    write_problems(probs_path, arith_problems(30))
    out = tmp_path / "t.jsonl"
    code = (
        "from ssgr.data.generate import generate; "
        f"generate({str(tiny_model_dir)!r}, {str(probs_path)!r}, {str(out)!r}, n=2, "
        "max_new_tokens=16, batch_size=2, progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    done = out.read_bytes().count(b"\n")
    assert 4 <= done < 60
    st = generate(str(tiny_model_dir), str(probs_path), out, n=2, max_new_tokens=16, batch_size=2,
                  progress=False)
    assert st.skipped + st.written == 60 and st.written >= 60 - done
    rows = _lines(out)
    assert len(rows) == 60 and len({(r["problem_id"], r["sample"]) for r in rows}) == 60
    ref = tmp_path / "ref.jsonl"
    generate(
        str(tiny_model_dir),
        str(probs_path),
        ref,
        n=2,
        max_new_tokens=16,
        batch_size=2,
        progress=False,
    )
    assert _by_key(out) == _by_key(ref)


def test_no_ignored_sampling_flags_warning(tmp_path):
    """The packaged tiny model's generation_config.json sets temperature / top_p; ssgr samples
    with its own seeded sampler, so transformers must not report them as "may be ignored"."""
    code = (
        "from ssgr.data.generate import generate; from ssgr.data.problems import arith_problems; "
        "from ssgr.models import tiny_dir; "
        f"generate(str(tiny_dir()), arith_problems(1), {str(tmp_path / 't.jsonl')!r}, n=2, "
        "max_new_tokens=4, progress=False)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 2
    assert "may be ignored" not in r.stderr and "temperature" not in r.stderr, r.stderr[-2000:]
