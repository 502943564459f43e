"""ssgr.io's output-safety helpers: the run lock, the ssgr-owned manifest, cached file hashes
(issue #18 items 6, 9, 10). Siblings of the issue's inputs: a lock held in this process and in
another one, a killed holder (stale lock), nested and temporary files in the manifest, a file
rewritten with the same size (the cache must not trust it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from ssgr.errors import InputError
from ssgr.io import (
    MANIFEST,
    ForeignFilesError,
    OutputLockedError,
    claim_files,
    file_sha256,
    foreign_files,
    lock_path,
    output_lock,
    remove_owned,
    write_json_atomic,
    write_jsonl_atomic,
)


def test_lock_refuses_a_second_holder_naming_its_pid(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "--out") as lock:
        assert lock == lock_path(out) and lock.read_text().strip() == str(os.getpid())
        assert not out.exists()  # the lock lives beside the output
        with pytest.raises(OutputLockedError, match=rf"--out .*out is in use by another ssgr run "
                                                    rf"\(pid {os.getpid()}"):
            with output_lock(out, "--out"):
                pass
        assert isinstance(OutputLockedError("x"), InputError)
    assert not lock.exists()
    with output_lock(out):  # free again
        pass


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_lock_released_on_error_and_interrupt(tmp_path, exc):
    out = tmp_path / "out"
    with pytest.raises(exc):
        with output_lock(out):
            raise exc
    assert not lock_path(out).exists()
    with output_lock(out):
        pass


_HOLD = """
import sys, time
from ssgr.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_between_processes_and_stale_lock_taken_over(tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"pid {p.pid}\b"):
            with output_lock(out):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # the killed holder left its lock file (with its dead pid): a stale lock is taken over
    assert lock_path(out).read_text().strip() == str(p.pid)
    with output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock_path(out).exists()


def test_manifest_names_foreign_files_and_removes_only_ours(tmp_path):
    d = tmp_path / "out"
    claim_files(d, ["a.json", "state"])
    claim_files(d, ["b.bin", "a.json"])  # union, no duplicates
    assert json.loads((d / MANIFEST).read_text())["files"] == ["a.json", "state", "b.bin"]
    (d / "a.json").write_text("{}")
    (d / "state").mkdir()
    (d / "state" / "x").write_text("1")
    (d / "b.bin.tmp").write_text("partial")  # temporaries of our names are ours
    (d / ".a.json.k3j.tmp").write_text("{")
    (d / "state.tmp").mkdir()
    (d / "state.trash").mkdir()
    assert foreign_files(d) == []
    (d / "user.txt").write_text("mine")
    (d / "sub").mkdir()
    (d / "sub" / "deep.txt").write_text("mine")
    (d / "a.json.bak").write_text("mine")  # not a temporary of a.json
    assert foreign_files(d) == ["a.json.bak", "sub", "user.txt"]
    with pytest.raises(ForeignFilesError, match=r"did not write \(a\.json\.bak, sub, user\.txt\)"
                                                r".*--overwrite removes only"):
        remove_owned(d)
    assert (d / "a.json").is_file() and (d / "state" / "x").is_file()
    for n in ("user.txt", "a.json.bak", "sub/deep.txt"):
        (d / n).unlink()
    (d / "sub").rmdir()
    remove_owned(d)
    assert d.is_dir() and list(d.iterdir()) == []


def test_manifest_nested_entries_and_no_manifest(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "x.txt").write_text("1")
    assert foreign_files(d) == ["x.txt"]  # no manifest: nothing is ours
    with pytest.raises(ForeignFilesError):
        remove_owned(d)
    (d / "x.txt").unlink()
    claim_files(d, ["eval/a.json"])
    (d / "eval").mkdir()
    (d / "eval" / "a.json").write_text("{}")
    (d / "eval" / "b.json").write_text("{}")
    assert foreign_files(d) == ["eval/b.json"]
    names = [f"f{i}" for i in range(7)]
    for n in names:
        (d / n).write_text("")
    with pytest.raises(ForeignFilesError, match=r"\(eval/b\.json, f0, f1, f2, f3 and 3 more\)"):
        remove_owned(d)


def test_file_sha256_cache_is_keyed_on_the_file_state(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    monkeypatch.setenv("SSGR_HASH_CACHE", str(cache))
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 1000)
    want = hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(f) == want and not cache.exists()  # no cache unless asked
    assert file_sha256(f, cache=True) == want
    table = json.loads(cache.read_text())
    assert list(table.values()) == [want]
    # a hit is served from the cache (proved by a planted value for the same file state)
    key = next(iter(table))
    cache.write_text(json.dumps({key: "planted"}))
    assert file_sha256(f, cache=True) == "planted"
    # the same size rewritten (the issue: weights replaced by others of the same shapes)
    f.write_bytes(b"b" * 1000)
    assert file_sha256(f, cache=True) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(json.loads(cache.read_text())) == 1  # the stale entry was dropped
    cache.write_text("not json")  # a broken cache is ignored and rewritten
    assert file_sha256(f, cache=True) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(json.loads(cache.read_text())) == 1


def test_atomic_writes_keep_the_permissions_a_plain_write_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    new = tmp_path / "new.json"
    write_json_atomic(new, {"a": 1})  # mkstemp alone would make it 0600
    assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    old = tmp_path / "old.jsonl"
    old.write_text("")
    os.chmod(old, 0o640)
    write_jsonl_atomic(old, [{"a": 1}])
    assert old.stat().st_mode & 0o777 == 0o640
    assert json.loads(old.read_text()) == {"a": 1}
