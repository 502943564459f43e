"""Issue #19 (prune side): every bad input and broken environment is one clear error, raised
before any work where it can be known before (nothing written to --out).

Siblings (inputs of the same kind that the issue does not list) were chosen by changing the
listed input along one axis: another byte that is not UTF-8 (a cut multi-byte sequence), deep
nesting through objects instead of lists, Infinity beside NaN, 1.5 beside 2.0, the vocabulary
size itself beside a huge id, another invalid regex, --max-sequences -1 beside 0, --device mps
beside tpu, --ignore beside --targets, permission denied beside a read-only file system, and a
full disk that really fills (a tiny tmpfs) beside a simulated ENOSPC."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from _prune_helpers import random_calib, run_cli, tiny_model

from ssgr.errors import SSGRError
from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import CalibError, LayerError, ModelError, OutputError, PruneError

INDEX = "model.safetensors.index.json"


def _cfg(model, calib, out, **kw):
    kw = {"device": "cpu", "sparsity": "2:4", **kw}
    return PruneConfig(model=str(model), calib=str(calib), out=str(out), **kw)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return tiny_model("llama", tmp_path_factory.mktemp("sh") / "m", max_shard_size="60KB")


def _copy(src, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    return dst


def _one_error(r) -> str:
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1, r.stderr[-2000:]
    return errors[0]


# ------------------------------------------------------------------ item 2: model directories

def _index(d):
    return json.loads((d / INDEX).read_text())


@pytest.mark.parametrize("fault,match", [
    ("not_json", r"index\.json: the safetensors index is not valid JSON"),
    ("list", r"index\.json: the index is a JSON list"),
    ("no_weight_map", r"index\.json: no \"weight_map\""),
    ("wrong_shard", r"weight_map\['model\.layers\.1\.mlp\.down_proj\.weight'\] names .*which "
                    r"does not hold that tensor \(it is in "),
    ("missing_shard", r"names shard gone\.safetensors .*missing"),  # sibling
    ("truncated", r"safetensors: tensor .* ends at byte \d+ of the data but the file holds only"),
    ("garbage", r"safetensors: header length \d+ does not fit"),
    ("appended", r"safetensors: 5 bytes after the last tensor"),  # sibling
    ("no_config", r"has no config\.json"),
    ("no_weights", r"holds no \*\.safetensors weights"),
])
def test_broken_model_dir_before_any_work(tmp_path, sharded, calib_file, fault, match):
    d = _copy(sharded, tmp_path)
    shards = sorted(d.glob("*.safetensors"))
    assert len(shards) >= 2
    last = shards[-1]
    if fault == "not_json":
        (d / INDEX).write_text('{"weight_map": ')
    elif fault == "list":
        (d / INDEX).write_text(json.dumps(list(_index(d)["weight_map"])))
    elif fault == "no_weight_map":
        (d / INDEX).write_text(json.dumps({"metadata": {}}))
    elif fault in ("wrong_shard", "missing_shard"):
        idx = _index(d)
        key = "model.layers.1.mlp.down_proj.weight"
        other = next(s.name for s in shards if s.name != idx["weight_map"][key])
        idx["weight_map"][key] = other if fault == "wrong_shard" else "gone.safetensors"
        (d / INDEX).write_text(json.dumps(idx))
    elif fault == "truncated":
        last.write_bytes(last.read_bytes()[:-100])
    elif fault == "garbage":
        last.write_bytes(os.urandom(64) + b"\xff" * 8)
    elif fault == "appended":
        last.write_bytes(last.read_bytes() + b"\0" * 5)
    elif fault == "no_config":
        (d / "config.json").unlink()
    elif fault == "no_weights":
        (d / INDEX).unlink()
        for s in shards:
            s.unlink()
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=match):
        prune_model(_cfg(d, calib_file, out))
    assert not out.exists()


def test_broken_model_dir_cli(tmp_path, sharded, calib_file):
    d = _copy(sharded, tmp_path)
    (d / INDEX).write_text("[]")
    err = _one_error(run_cli([d, "--calib", calib_file, "--out", tmp_path / "o"]))
    assert f"{d / INDEX}: the index is a JSON list" in err
    assert not (tmp_path / "o").exists()


def test_text_lines_without_tokenizer(tmp_path, llama_dir):
    calib = tmp_path / "c.jsonl"
    calib.write_text('{"input_ids": [1, 2]}\n{"text": "two plus two"}\n')
    with pytest.raises(CalibError, match=r"c\.jsonl:2: .*needs the model's tokenizer.*none of "
                                         r"tokenizer\.json"):
        prune_model(_cfg(llama_dir, calib, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------- items 1/3: jsonl and non-finite numbers

@pytest.mark.parametrize("line,match", [
    (b'{"input_ids": [1, 2], "note": "\xff"}', r"c\.jsonl:2: not valid UTF-8 \(byte 0xff at "
                                              r"column 32\)"),
    (b'{"input_ids": [1, 2], "note": "\xc3"}', r"c\.jsonl:2: not valid UTF-8 \(byte 0xc3"),
    (b"[" * 100_000 + b"]" * 100_000, r"c\.jsonl:2: malformed JSON"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, r"c\.jsonl:2: malformed JSON"),
    (b'{"input_ids": [1, NaN]}', r"c\.jsonl:2: NaN is not a finite number"),
    (b'{"input_ids": [1, Infinity]}', r"c\.jsonl:2: Infinity is not a finite number"),
    (b'{"input_ids": [1, 2.0]}', r"c\.jsonl:2: \"input_ids\" must be a list of ints"),
    (b'{"input_ids": [1, 1.5]}', r"c\.jsonl:2: \"input_ids\" must be a list of ints"),
    (b'{"input_ids": [1, -3]}', r"c\.jsonl:2: token id -3 is outside the model's vocabulary"),
    (b'{"input_ids": [1, 99999999999]}', r"c\.jsonl:2: token id 99999999999 is outside"),
    (b'{"input_ids": [1, 128]}', r"c\.jsonl:2: token id 128 is outside .*\[0, 128\)"),
])
def test_bad_calibration_bytes_through_cli(tmp_path, llama_dir, line, match):
    calib = tmp_path / "c.jsonl"
    calib.write_bytes(b'{"input_ids": [5, 6, 7]}\n' + line + b"\n")
    import re

    err = _one_error(run_cli([llama_dir, "--calib", calib, "--out", tmp_path / "o",
                              "--device", "cpu"]))
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- item 4: options

@pytest.mark.parametrize("kw,match", [
    ({"targets": ["re:("]}, r"--targets re:\(: invalid regular expression"),
    ({"targets": ["mlp.*", "re:[a-"]}, r"--targets re:\[a-: invalid regular expression"),
    ({"ignore": ["re:*x"]}, r"--ignore re:\*x: invalid regular expression"),
    ({"max_sequences": 0}, r"--max-sequences must be >= 1, got 0"),
    ({"max_sequences": -1}, r"--max-sequences must be >= 1, got -1"),
    ({"device": "tpu"}, r"--device tpu: not a device ssgr runs on; choose cpu, cuda or cuda:N"),
    ({"device": "mps"}, r"--device mps: not a device ssgr runs on; choose cpu, cuda or cuda:N"),
    ({"blocksize": 0}, r"--blocksize"),
    ({"blocksize": -128, "sparsity": "0.5"}, r"--blocksize must be positive"),
    ({"percdamp": -0.1}, r"--percdamp must be in \(0, 1\]"),
    ({"percdamp": float("nan")}, r"--percdamp must be in \(0, 1\]"),
    ({"percdamp": 5.0}, r"--percdamp must be in \(0, 1\]"),
    ({"checkpoint_every": -1}, r"--checkpoint-every must be >= 0"),
    ({"max_activation_memory": "8 parsecs"}, r"--max-activation-memory: bad memory size"),
    ({"max_activation_memory": "lots"}, r"--max-activation-memory: bad memory size"),
])
def test_bad_options_before_any_work(tmp_path, llama_dir, calib_file, kw, match):
    out = tmp_path / "out"
    with pytest.raises(PruneError, match=match):
        prune_model(_cfg(llama_dir, calib_file, out, **kw))
    assert not out.exists()


def test_calib_is_a_directory(tmp_path, llama_dir, calib_file):
    (tmp_path / "cdir").mkdir()
    err = _one_error(run_cli([llama_dir, "--calib", tmp_path / "cdir", "--out", tmp_path / "o"]))
    assert f"--calib {tmp_path / 'cdir'} is a directory" in err
    err = _one_error(run_cli([llama_dir, "--calib", tmp_path, "--out", tmp_path / "o2",
                              "--targets", "re:("]))
    assert "--targets re:(: invalid regular expression" in err
    err = _one_error(run_cli([llama_dir, "--calib", calib_file, "--out", tmp_path / "o",
                              "--device", "tpu"]))
    assert "choose cpu, cuda or cuda:N" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("order", ["layer", "module"])
@pytest.mark.parametrize("cls,module", [("LlamaMLP", "mlp"), ("LlamaAttention", "self_attn")])
def test_error_inside_layer_forward_names_layer_and_module(tmp_path, llama_dir, calib_file,
                                                           monkeypatch, order, cls, module):
    import transformers.models.llama.modeling_llama as ml

    def broken(self, *a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (7x64 and 65x128)")

    monkeypatch.setattr(getattr(ml, cls), "forward", broken)
    with pytest.raises(LayerError, match=rf"layer 0 \(model\.layers\.0\): RuntimeError in the "
                                         rf"forward of module model\.layers\.0\.{module}: mat1") \
            as ei:
        prune_model(_cfg(llama_dir, calib_file, tmp_path / "out", sequential=order))
    assert isinstance(ei.value.__cause__, RuntimeError)


# -------------------------------------------------------------------- item 5: unwritable --out

def test_out_under_a_file_or_unwritable(tmp_path, llama_dir, calib_file):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "sub", blocker / "a" / "b"):
        with pytest.raises(OutputError, match=rf"cannot write {out}: {blocker} is a file"):
            prune_model(_cfg(llama_dir, calib_file, out))
    assert blocker.read_text() == "x"
    # /sys refuses new files even to root: permission denied (a real one)
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK | os.X_OK) or _sys_refuses():
        with pytest.raises(OutputError, match=r"cannot write /sys/ssgr_out: permission denied "
                                              r"\(choose another --out\)"):
            prune_model(_cfg(llama_dir, calib_file, "/sys/ssgr_out"))
    else:
        pytest.skip("/sys accepts files here")


def _sys_refuses() -> bool:
    import tempfile

    try:
        fd, p = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(p)
    return False


def test_out_on_read_only_file_system_simulated(tmp_path, llama_dir, calib_file, monkeypatch):
    import tempfile

    def rofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", rofs)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'o'}: read-only file "
                                          r"system \(choose another --out\)"):
        prune_model(_cfg(llama_dir, calib_file, tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def _tmpfs_cmd(mnt, opts: str, args: list) -> list[str]:
    """``python -m ssgr.prune ARGS`` in a private mount namespace with a tmpfs on ``mnt``."""
    py = " ".join(map(str, [sys.executable, "-m", "ssgr.prune", *args]))
    return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {opts} none {mnt} && exec {py}"]


def _tmpfs_ok(tmp_path) -> bool:
    mnt = tmp_path / "probe"
    mnt.mkdir()
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k none {mnt}"],
                       capture_output=True)
    return r.returncode == 0


def test_out_on_real_read_only_and_full_tmpfs(tmp_path, llama_dir, calib_file):
    if not _tmpfs_ok(tmp_path):
        pytest.skip("no private mount namespace / tmpfs here (needs unshare and mount rights)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    base = [llama_dir, "--calib", calib_file, "--device", "cpu", "--out"]
    r = subprocess.run(_tmpfs_cmd(mnt, "size=1m,ro", [*base, mnt / "o"]), capture_output=True,
                       text=True)
    err = _one_error(r)
    assert f"cannot write {mnt / 'o'}: read-only file system (choose another --out)" in err
    r = subprocess.run(_tmpfs_cmd(mnt, "size=120k", [*base, mnt / "o"]), capture_output=True,
                       text=True)
    err = _one_error(r)
    assert "disk full while writing" in err and "rerun the same command with --resume" in err


# ------------------------------------------------------------------------ item 6: disk full

def test_disk_full_while_writing_a_shard_then_resume(tmp_path, llama_dir, calib_file,
                                                     monkeypatch):
    import safetensors.torch as st

    real = st.save_file
    calls = {"n": 0}

    def full(tensors, filename, metadata=None):
        if "model-layer-00001" in str(filename):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    out = tmp_path / "out"
    cfg = _cfg(llama_dir, calib_file, out)
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(OutputError, match=rf"disk full while writing {out}/model-layer-00001"
                                          r"\.safetensors; free space and rerun the same "
                                          r"command with --resume") as ei:
        prune_model(cfg)
    assert calls["n"] == 1 and isinstance(ei.value, SSGRError)
    assert ei.value.__cause__.errno == errno.ENOSPC
    monkeypatch.setattr(st, "save_file", real)
    rep = prune_model(dataclasses.replace(cfg, resume=True))
    assert rep["status"] == "complete" and rep["resumed_from_layer"] == 1


def test_disk_full_while_writing_state_numpy_short_write(tmp_path, llama_dir, monkeypatch):
    """The sibling: numpy's short write ("N requested and M written", no errno) while saving
    the activation checkpoint (``ssgr.prune.store.save_raw``)."""
    import types

    import ssgr.prune.store as store

    calib = random_calib(tmp_path / "c.jsonl", [20, 30])

    def replace(a, b):
        if "acts" in str(b):
            raise OSError("32768 requested and 24576 written")
        return os.replace(a, b)

    monkeypatch.setattr(store, "os", types.SimpleNamespace(replace=replace))
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"disk full while writing .*acts.*\.bin; free space"):
        prune_model(_cfg(llama_dir, calib, out, offload="cpu"))
