"""#18 items 6, 7, 10 and #19 items 5, 7 on the data side: traces keyed on the problems' and the
model's content, one run per output, prompts that leave no room to generate, unwritable outputs
and the side file of a failed start."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from ssgr.data.errors import DataError
from ssgr.data.generate import generate
from ssgr.data.problems import Problem


def _probs(q: str = "1+1", a: str = "2") -> list[Problem]:
    return [Problem("p0", q, a), Problem("p1", "2+3", "5")]


def _gen(model: Path, probs, out: Path, **kw):
    return generate(str(model), probs, out, n=1, max_new_tokens=4, device="cpu",
                    progress=False, **kw)


def test_colliding_ids_with_other_questions_are_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "t.jsonl"
    _gen(tiny_model_dir, _probs(), out)
    before = out.read_bytes()
    # the case: same id, other question
    with pytest.raises(DataError, match=r"problem id\(s\) 'p0'.*new --out"):
        _gen(tiny_model_dir, _probs(q="7+7"), out)
    # sibling: same question, other gold answer (the old verdicts would be wrong too)
    with pytest.raises(DataError, match=r"problem id\(s\) 'p0'"):
        _gen(tiny_model_dir, _probs(a="3"), out)
    assert out.read_bytes() == before
    # new ids beside the old ones resume normally
    st = _gen(tiny_model_dir, [*_probs(), Problem("p2", "4+4", "8")], out)
    assert st.skipped == 2 and st.written == 1


def test_other_model_weights_at_the_same_path_are_refused(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "t.jsonl"
    _gen(model, _probs(), out)
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = cfg.get("rms_norm_eps", 1e-6) * 10  # sibling: config only
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="model_sha256"):
        _gen(model, _probs(), out)


def test_meta_of_an_empty_traces_file_is_ignored(tiny_model_dir, tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text("")
    Path(str(out) + ".meta.json").write_text(json.dumps({"model": "broken", "seed": 0}))
    st = _gen(tiny_model_dir, _probs(), out)
    assert st.written == 2
    assert json.loads(Path(str(out) + ".meta.json").read_text())["model"] == str(tiny_model_dir)


def test_failed_start_writes_no_meta(tmp_path):
    out = tmp_path / "t.jsonl"
    with pytest.raises(Exception, match="model"):
        _gen(tmp_path / "no-such-model", _probs(), out)
    assert not Path(str(out) + ".meta.json").exists()


def test_second_generate_on_one_output_is_refused(tiny_model_dir, tmp_path):
    import fcntl
    import os

    from ssgr.io import OutputLockedError, lock_path

    out = tmp_path / "t.jsonl"
    lock = lock_path(out)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    try:
        with pytest.raises(OutputLockedError, match="pid 4242"):
            _gen(tiny_model_dir, _probs(), out)
    finally:
        os.close(fd)
    assert not out.exists()
    _ = threading  # (locks also hold between threads of one process: see tests/test_io.py)


@pytest.mark.parametrize("chars", [1500, 1_000_000])
def test_prompt_without_room_is_refused_quickly(tiny_model_dir, tmp_path, chars):
    import time

    from transformers import AutoConfig

    ctx = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings
    assert chars > ctx
    probs = [Problem("short", "1+1", "2"), Problem("huge", "1" * chars, "1")]
    out = tmp_path / "t.jsonl"
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"'huge' \(\d+ tokens\).*no room to generate"):
        _gen(tiny_model_dir, probs, out)
    assert time.perf_counter() - t0 < 30
    assert not out.exists() or out.stat().st_size == 0


def test_prompt_room_boundary():
    from ssgr.data.generate import prompt_room

    def tok(text, add_special_tokens=False):
        return {"input_ids": list(text)}

    assert prompt_room(tok, "a" * 8, 10) is None  # 8 tokens, 2 positions left
    assert prompt_room(tok, "a" * 9, 10) == 9  # context - 1: no room
    assert prompt_room(tok, "a" * 10, 10) == 10
    assert prompt_room(tok, "a" * 10_000, 10) >= 9  # judged from a prefix


def test_directory_as_file_output_is_refused(tiny_model_dir, tmp_path):
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    with pytest.raises(DataError, match="is an existing directory"):
        _gen(tiny_model_dir, _probs(), d)


def _ro_mount(tmp_path: Path) -> Path:
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("mounting a read-only tmpfs is not permitted here")
    return mnt


@pytest.mark.parametrize("command", ["generate", "select", "ppl", "eval", "run"])
def test_read_only_output_is_refused_before_work(tmp_path, command, caplog):
    import subprocess

    from ssgr.data.outputs import check_output

    mnt = _ro_mount(tmp_path)
    try:
        with pytest.raises(DataError, match=r"cannot write .*read-only file system \(choose "
                                            r"another --out\)"):
            check_output(mnt / "sub" / "out.jsonl")
        from ssgr.cli import main

        args = {
            "generate": ["generate", "tiny", "--problems", "builtin:arith?n=5", "--out"],
            "select": ["select", "--strategy", "sgr", "nonexistent.jsonl", "--out"],
            "ppl": ["ppl", "tiny", "--traces", "nonexistent.jsonl", "--out"],
            "eval": ["eval", "tiny", "--problems", "builtin:arith?n=5", "--out"],
            "run": ["run", "--quick", "--out"],
        }[command]
        assert main([*args, str(mnt / "x.json")]) == 2
        assert "read-only file system (choose another --out)" in caplog.text
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_message(tmp_path):
    import errno

    from ssgr.data.outputs import is_write_failure, write_failure

    e = OSError(errno.ENOSPC, "No space left on device", "/x/t.jsonl")
    assert is_write_failure(e)
    assert str(write_failure(e)).startswith("disk full while writing /x/t.jsonl; free space and "
                                            "rerun the same command")
    short = OSError("32768 requested and 24576 written")  # sibling: a short write, no errno
    assert is_write_failure(short)
    assert not is_write_failure(FileNotFoundError(errno.ENOENT, "missing"))


def test_disk_full_through_generate(tiny_model_dir):
    """#19 item 6: a full disk while appending samples (simulated by writing TRACES to
    /dev/full, which fails every write with ENOSPC) gives the one-line message, no traceback."""
    import os

    full = Path("/dev/full")
    if not full.exists() or not os.access("/dev", os.W_OK):
        pytest.skip("/dev/full is not available or /dev is not writable")
    side = Path("/dev/full.meta.json")
    try:
        with pytest.raises(DataError, match="disk full while writing /dev/full; free space and "
                                            "rerun the same command"):
            _gen(tiny_model_dir, _probs(), full)
    finally:
        side.unlink(missing_ok=True)
