"""Issue #18, the prune-engine items: each with the issue's input and a sibling of the same kind.

* 1 padding: the issue's 4 right-padded lines (20/33/64/9 tokens padded to 64 with id 0) equal
  the unpadded run bit for bit; siblings: left and two-sided padding (the other contiguous
  shapes), a mask with a hole (kept in the forward, excluded from the statistics: equals the
  naive reference fed the same positions), bad masks and other per-token fields (refused with
  file:line).
* 3 ``--dtype auto``: bf16 (the issue's) and fp16 checkpoints stay in their dtype, config
  unchanged; siblings: float32 stays float32, mixed checkpoints follow the documented rule.
* 4 dead inputs: the issue's zeroed norm weight (a whole Hessian zero); sibling: 3 of every 4
  inputs dead under 2:4 (a partial deviation; and Wanda, which keeps the pattern: not flagged).
* 6 ``--resume``: the issue's finished --out resumed with another model, calibration, method,
  sparsity; the issue's weights replaced by others of the same shapes; siblings: the config alone
  changed (refused), the same weights rewritten (accepted: content, not mtime).
* 9 ``--overwrite``: the issue's foreign file (tests/prune/test_prune_errors.py); siblings here:
  foreign files and folders in a finished output, our own temporaries (removed).
* 10 lock: the issue's two prunes on one --out (the second with --overwrite) across processes;
  sibling: the same process, and a killed holder's stale lock taken over.
* 11 state folder: the issue's kill during the final cleanup and a kill before the state folder
  is complete (simulated with KeyboardInterrupt at those steps); siblings: leftover temporaries.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _prune_helpers import naive_prune, random_calib, run_cli, state, tiny_model

from ssgr.io import OutputLockedError, lock_path, output_lock
from ssgr.prune.calib import CalibError
from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import PruneError
from ssgr.prune.pattern import parse_pattern
from ssgr.prune.report import format_table


def _cfg(src, calib, out, **kw) -> PruneConfig:
    return PruneConfig(model=str(src), calib=str(calib), out=str(out), device="cpu", **kw)


def _assert_same(a_dir, b_dir) -> None:
    a, b = state(a_dir), state(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------ 1: padding
LENGTHS = (20, 33, 64, 9)


def _seqs(seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 128, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def pad_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pad")
    src = tiny_model("llama", root / "m")
    plain = root / "plain.jsonl"
    _write(plain, [{"input_ids": s} for s in _seqs()])
    out = root / "plain-out"
    rep = prune_model(_cfg(src, plain, out, sparsity="0.5"))
    return src, out, rep


def test_right_padding_equals_unpadded_run(tmp_path, pad_model):
    src, ref, ref_rep = pad_model
    calib = tmp_path / "padded.jsonl"  # the input: right-padded to 64 with id 0
    _write(calib, [{"input_ids": s + [0] * (64 - len(s)),
                    "attention_mask": [1] * len(s) + [0] * (64 - len(s))} for s in _seqs()])
    rep = prune_model(_cfg(src, calib, tmp_path / "out", sparsity="0.5"))
    _assert_same(ref, tmp_path / "out")
    assert rep["tokens"] == rep["statistics_tokens"] == 126 == ref_rep["tokens"]
    assert all(m["tokens"] == 126 for m in rep["modules"])


def test_left_and_two_sided_padding_equal_unpadded_run(tmp_path, pad_model):
    src, ref, _ = pad_model
    rows = []
    for i, s in enumerate(_seqs()):
        pad = 64 - len(s)
        left = pad if i % 2 == 0 else pad // 2  # left padding, and padding on both sides
        right = pad - left
        rows.append({"input_ids": [7] * left + s + [0] * right,
                     "attention_mask": [0] * left + [1] * len(s) + [0] * right, "id": i})
    calib = tmp_path / "left.jsonl"
    _write(calib, rows)
    prune_model(_cfg(src, calib, tmp_path / "out", sparsity="0.5"))
    _assert_same(ref, tmp_path / "out")


def test_mask_with_a_hole_excludes_positions_from_statistics(tmp_path):
    src = tiny_model("qwen2", tmp_path / "m")
    seqs = _seqs(seed=5)
    masks = [[1] * len(s) for s in seqs]
    masks[1][5:12] = [0] * 7  # a hole inside: those tokens stay as context
    masks[2][0:3] = [0] * 3
    masks[2][40:50] = [0] * 10
    calib = tmp_path / "hole.jsonl"
    _write(calib, [{"input_ids": s, "attention_mask": m}
                   for s, m in zip(seqs, masks, strict=True)])
    out = tmp_path / "out"
    rep = prune_model(_cfg(src, calib, out, sparsity="2:4", sequential="layer"))
    assert rep["tokens"] == 126 and rep["statistics_tokens"] == 126 - 20
    assert all(m["tokens"] == 106 for m in rep["modules"])
    select = [torch.tensor([i for i, v in enumerate(m) if v]) for m in masks]
    ids = [torch.tensor([s]) for s in seqs]
    ref = naive_prune(src, ids, parse_pattern("2:4"), order="layer", select=select)
    got = state(out)
    for k, v in got.items():
        torch.testing.assert_close(v, ref.state_dict()[k], atol=2e-5, rtol=1e-4, msg=k)
    unmasked = naive_prune(src, ids, parse_pattern("2:4"), order="layer")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal((got[q] != 0), (unmasked.state_dict()[q] != 0))  # the mask mattered


@pytest.mark.parametrize("extra,match", [
    ({"attention_mask": [1, 1, 0]}, r"has 3 values but the sequence has 5 tokens"),
    ({"attention_mask": [1, 2, 1, 1, 0]}, r"list of 0/1 ints"),
    ({"attention_mask": [1, True, 1, 1, 0]}, r"list of 0/1 ints"),
    ({"attention_mask": [0, 0, 0, 0, 0]}, r"masks every token"),
    ({"labels": [-100, -100, 3, 4, 5]}, r'per-token field "labels"'),
    ({"position_ids": [0, 1, 2, 3, 4]}, r'per-token field "position_ids"'),
    ({"token_type_ids": [0, 0, 0, 0, 0]}, r'per-token field "token_type_ids"'),
    ({"weights": [1.0, 1.0, 0.5, 0.5, 0.0]}, r'per-token field "weights"'),
])
def test_bad_masks_and_per_token_fields_name_file_and_line(tmp_path, llama_dir, extra, match):
    calib = tmp_path / "c.jsonl"
    _write(calib, [{"input_ids": [1, 2, 3, 4, 5, 6]}, {"input_ids": [1, 2, 3, 4, 5], **extra}])
    with pytest.raises(CalibError, match=r"c\.jsonl:2: .*" + match):
        prune_model(_cfg(llama_dir, calib, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ 3: --dtype auto
def _convert(src, dst, dtype_of, config_dtype: str | None):
    """Copy model ``src`` to ``dst`` with each floating tensor in ``dtype_of(name, tensor)``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    sd = load_file(str(f))
    save_file({k: v.to(dtype_of(k, v)) if v.is_floating_point() else v for k, v in sd.items()},
              str(f), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    for key in ("dtype", "torch_dtype"):
        if config_dtype is None:  # a config that names no dtype: only the headers tell
            cfg.pop(key, None)
        elif key in cfg:
            cfg[key] = config_dtype
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


@pytest.mark.parametrize("name,dtype,config_says", [
    ("bfloat16", torch.bfloat16, "bfloat16"), ("bfloat16", torch.bfloat16, None),
    ("float16", torch.float16, "float16"), ("float16", torch.float16, None),
    ("float32", torch.float32, "float32"),
])
def test_dtype_auto_keeps_the_checkpoint_dtype(tmp_path, llama_dir, calib_file, name, dtype,
                                               config_says):
    src = _convert(llama_dir, tmp_path / "m", lambda k, v: dtype, config_says)
    out = tmp_path / "out"
    rep = prune_model(_cfg(src, calib_file, out, sparsity="2:4"))
    assert rep["dtype"] == name
    got = state(out)
    assert {v.dtype for v in got.values() if v.is_floating_point()} == {dtype}
    assert json.loads((out / "config.json").read_text()) == \
        json.loads((src / "config.json").read_text())
    q = got["model.layers.1.self_attn.q_proj.weight"]
    assert float((q == 0).float().mean()) == 0.5


@pytest.mark.parametrize("config_dtype,want", [("bfloat16", torch.bfloat16),
                                               ("float16", torch.float32)])
def test_dtype_auto_mixed_checkpoint(tmp_path, llama_dir, calib_file, caplog, config_dtype, want):
    # matrices bf16, norms float32: the config's dtype when it is one of them, else float32
    src = _convert(llama_dir, tmp_path / "m",
                   lambda k, v: torch.bfloat16 if v.dim() == 2 else torch.float32, config_dtype)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        prune_model(_cfg(src, calib_file, out, sparsity="2:4"))
    assert "mixes floating dtypes" in caplog.text
    assert {v.dtype for v in state(out).values() if v.is_floating_point()} == {want}


# ------------------------------------------------------------------------------ 4: dead inputs
def _zero(src, key, idx=None):
    from safetensors.torch import load_file, save_file

    f = src / "model.safetensors"
    sd = load_file(str(f))
    if idx is None:
        sd[key].zero_()
    else:
        sd[key][idx] = 0
    save_file(sd, str(f), metadata={"format": "pt"})


def test_dead_inputs_are_flagged_and_sparsity_is_measured(tmp_path, calib_file, caplog):
    src = tiny_model("llama", tmp_path / "m")
    _zero(src, "model.layers.1.input_layernorm.weight")  # the zeroed norm weight
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):  # --min-tokens 0: no magnitude fallback (#16)
        rep = prune_model(_cfg(src, calib_file, out, sparsity="0.5", min_tokens=0))
    mods = {m["name"]: m for m in rep["modules"]}
    q = mods["model.layers.1.self_attn.q_proj"]
    assert q["sparsity"] == 1.0 and q["dead_inputs"] == 64 and "100.0%" in q["flag"]
    assert "model.layers.1.self_attn.q_proj" in rep["totals"]["flagged"]
    assert "layer 1, module model.layers.1.self_attn.q_proj: 100.0% of its weights" in caplog.text
    assert all(not m["flag"] for m in rep["modules"] if m["layer"] == 0)
    assert "! 100.0% of its weights are zero" in format_table(rep)
    # every record's sparsity is the zero fraction of the written weight
    got = state(out)
    for m in rep["modules"]:
        assert m["sparsity"] == float((got[m["name"] + ".weight"] == 0).sum()) / \
            got[m["name"] + ".weight"].numel()
    w = {k: v for k, v in got.items() if k.endswith("proj.weight")}
    total = sum(float((v == 0).sum()) for v in w.values()) / sum(v.numel() for v in w.values())
    assert rep["totals"]["sparsity"] == pytest.approx(total, abs=1e-12)


def test_partly_dead_inputs_flagged_when_the_pattern_is_missed(tmp_path, calib_file):
    src = tiny_model("qwen2", tmp_path / "m")
    dead = torch.tensor([i for i in range(64) if i % 4])  # 3 of every 4 inputs of gate/up
    _zero(src, "model.layers.0.post_attention_layernorm.weight", dead)
    # SparseGPT zeroes dead input columns: 3 zeros in every group of 4 miss 2:4 (flagged)
    rep = prune_model(_cfg(src, calib_file, tmp_path / "out", sparsity="2:4"))
    mods = {m["name"]: m for m in rep["modules"]}
    for n in ("gate_proj", "up_proj"):
        m = mods[f"model.layers.0.mlp.{n}"]
        assert m["sparsity"] == 0.75 and m["dead_inputs"] == 48
        assert "75.0% of its weights are zero, the target is 50.0%; 48 of its 64 inputs" in \
            m["flag"]
    assert sorted(rep["totals"]["flagged"]) == ["model.layers.0.mlp.gate_proj",
                                                "model.layers.0.mlp.up_proj"]
    # Wanda prunes the dead columns first and keeps the pattern: recorded, not flagged
    rep = prune_model(_cfg(src, calib_file, tmp_path / "out2", method="wanda", sparsity="2:4"))
    m = {m["name"]: m for m in rep["modules"]}["model.layers.0.mlp.gate_proj"]
    assert m["sparsity"] == 0.5 and m["dead_inputs"] == 48 and m["flag"] is None
    assert rep["totals"]["flagged"] == []


# ------------------------------------------------------------------------------ 6: --resume
def test_resume_of_a_finished_out_made_by_another_command_is_refused(tmp_path, llama_dir,
                                                                     calib_file):
    out = tmp_path / "out"
    prune_model(_cfg(llama_dir, calib_file, out, sparsity="2:4"))
    before = (out / "prune_report.json").read_text()
    other_model = tiny_model("llama", tmp_path / "m2", seed=7)
    other_calib = random_calib(tmp_path / "c2.jsonl", [30, 40], seed=9)
    with pytest.raises(PruneError, match=r"different command.*--method.*--sparsity"):
        prune_model(_cfg(llama_dir, calib_file, out, sparsity="0.5", method="wanda",
                         resume=True))
    with pytest.raises(PruneError, match=r"calibration file's content"):
        prune_model(_cfg(llama_dir, other_calib, out, sparsity="2:4", resume=True))
    with pytest.raises(PruneError, match=r"model's weights \(model\.safetensors\)"):
        prune_model(_cfg(other_model, calib_file, out, sparsity="2:4", resume=True))
    assert (out / "prune_report.json").read_text() == before
    # the same command is accepted
    rep = prune_model(_cfg(llama_dir, calib_file, out, sparsity="2:4", resume=True))
    assert json.dumps(rep, sort_keys=True) == json.dumps(json.loads(before), sort_keys=True)


class _Stop(Exception):
    pass


def _stop_after_first(li):
    raise _Stop


def test_resume_after_weights_replaced_is_refused(tmp_path, calib_file):
    src = tiny_model("qwen3", tmp_path / "m", num_hidden_layers=3)
    ref = tmp_path / "ref"
    prune_model(_cfg(src, calib_file, ref))
    out = tmp_path / "out"
    with pytest.raises(_Stop):
        prune_model(_cfg(src, calib_file, out), on_layer_done=_stop_after_first)
    tiny_model("qwen3", src, seed=1, num_hidden_layers=3)  # same shapes, other weights
    with pytest.raises(PruneError, match=r"model's weights \(model\.safetensors\)"):
        prune_model(_cfg(src, calib_file, out, resume=True))
    # sibling: the config alone changed
    tiny_model("qwen3", src, seed=0, num_hidden_layers=3)  # the original weights back
    raw = (src / "config.json").read_text()
    (src / "config.json").write_text(json.dumps({**json.loads(raw), "rms_norm_eps": 1e-5}))
    with pytest.raises(PruneError, match=r"config\.json"):
        prune_model(_cfg(src, calib_file, out, resume=True))
    (src / "config.json").write_text(raw)
    # the same content rewritten (new mtime, new inode) is accepted: the hash is of the content
    rep = prune_model(_cfg(src, calib_file, out, resume=True))
    assert rep["resumed_from_layer"] == 1
    _assert_same(ref, out)


# ------------------------------------------------------------------------------ 9: --overwrite
def test_overwrite_refuses_foreign_files_and_removes_our_temporaries(tmp_path, llama_dir,
                                                                    calib_file):
    out = tmp_path / "out"
    prune_model(_cfg(llama_dir, calib_file, out, sparsity="2:4"))
    (out / "notes.md").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "a.txt").write_text("mine")
    for i in range(5):
        (out / f"z{i}.bin").write_text("x")
    with pytest.raises(PruneError, match=r"did not write \(extra, notes\.md, z0\.bin, z1\.bin, "
                                         r"z2\.bin and 2 more\)"):
        prune_model(_cfg(llama_dir, calib_file, out, sparsity="0.5", overwrite=True))
    assert (out / "extra" / "a.txt").is_file() and (out / "config.json").is_file()
    for p in ["notes.md", "extra/a.txt", "extra"] + [f"z{i}.bin" for i in range(5)]:
        (out / p).rmdir() if (out / p).is_dir() else (out / p).unlink()
    # temporaries of our own files (a killed run's) are ours
    (out / ".ssgr_state.tmp").mkdir()
    (out / ".ssgr_state.tmp" / "state.json").write_text("{}")
    (out / "model-layer-00001.safetensors.tmp").write_bytes(b"partial")
    (out / ".config.json.abc123.tmp").write_text("{")
    rep = prune_model(_cfg(llama_dir, calib_file, out, sparsity="0.5", overwrite=True))
    assert rep["pattern"] == "0.5"
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")] and ".ssgr_state" not in names


# ------------------------------------------------------------------------------ 10: lock
_SLOW_RUN = """
import sys, time
from ssgr.prune.engine import PruneConfig, prune_model
model, calib, out = sys.argv[1:4]
prune_model(PruneConfig(model=model, calib=calib, out=out, sparsity="2:4", device="cpu"),
            on_layer_done=lambda li: time.sleep(60))
"""


def test_second_prune_on_one_out_refuses_at_once(tmp_path, llama_dir, calib_file):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(llama_dir), str(calib_file),
                          str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = out / ".ssgr_state" / "state.json"
    try:
        deadline = time.time() + 90
        while not (state_file.is_file() and json.loads(state_file.read_text())["ckpt_layer"]):
            assert p.poll() is None and time.time() < deadline, "the first run did not get going"
            time.sleep(0.05)
        layer0 = (out / "model-layer-00000.safetensors").read_bytes()
        t0 = time.time()
        r = run_cli([llama_dir, "--calib", calib_file, "--out", out, "--sparsity", "1:8",
                     "--overwrite", "--device", "cpu"])
        assert r.returncode == 2 and f"in use by another ssgr run (pid {p.pid}" in r.stderr
        assert time.time() - t0 < 30
        assert (out / "model-layer-00000.safetensors").read_bytes() == layer0
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # the killed holder's lock is stale: taken over, and released at the end
    assert lock_path(out).exists()
    rep = prune_model(_cfg(llama_dir, calib_file, out, sparsity="2:4", resume=True))
    assert rep["pattern"] == "2:4" and rep["resumed_from_layer"] == 1
    assert not lock_path(out).exists()


def test_lock_held_in_this_process_refuses(tmp_path, llama_dir, calib_file):
    out = tmp_path / "out"
    with output_lock(out, "--out"):
        with pytest.raises(OutputLockedError, match=rf"pid {os.getpid()}"):
            prune_model(_cfg(llama_dir, calib_file, out))
    assert not out.exists()
    prune_model(_cfg(llama_dir, calib_file, out))
    assert not lock_path(out).exists()


# ------------------------------------------------------------------------------ 11: state folder
def test_kill_before_the_state_folder_is_complete(tmp_path, llama_dir, calib_file, monkeypatch):
    from ssgr.prune import state as state_mod

    ref = tmp_path / "ref"
    prune_model(_cfg(llama_dir, calib_file, ref))
    out = tmp_path / "out"

    def killed(self, layer):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(state_mod.RunState, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            prune_model(_cfg(llama_dir, calib_file, out))
    assert not (out / ".ssgr_state").exists() and (out / ".ssgr_state.tmp").is_dir()
    assert not lock_path(out).exists()  # released on KeyboardInterrupt
    rep = prune_model(_cfg(llama_dir, calib_file, out, resume=True))  # a rerun repairs it
    assert rep["status"] == "complete" and not (out / ".ssgr_state.tmp").exists()
    _assert_same(ref, out)


def test_kill_during_final_cleanup_is_repaired_by_resume(tmp_path, calib_file, monkeypatch):
    from ssgr.prune import state as state_mod

    src = tiny_model("qwen2", tmp_path / "m", num_hidden_layers=3)
    out = tmp_path / "out"
    real = os.rename

    def killed(a, b):
        if str(b).endswith(".trash"):
            raise KeyboardInterrupt
        return real(a, b)

    with monkeypatch.context() as m:
        m.setattr(state_mod.os, "rename", killed)
        with pytest.raises(KeyboardInterrupt):
            prune_model(_cfg(src, calib_file, out, offload="disk"))
    assert (out / "prune_report.json").is_file() and (out / ".ssgr_state" / "acts").is_dir()
    rep = prune_model(_cfg(src, calib_file, out, offload="disk", resume=True))
    assert rep["status"] == "complete" and not (out / ".ssgr_state").exists()
    # sibling: a kill after the rename, during the deletion
    (out / ".ssgr_state.trash" / "acts" / "L2").mkdir(parents=True)
    (out / ".ssgr_state.trash" / "acts" / "L2" / "0.bin").write_bytes(b"\0" * 1024)
    prune_model(_cfg(src, calib_file, out, offload="disk", resume=True))
    assert not (out / ".ssgr_state.trash").exists()
