"""Bad input: each a clear error, and nothing half-written left looking finished."""

from __future__ import annotations

import json

import pytest
import torch
from _prune_helpers import random_calib, tiny_model

from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import ActivationError, CalibError, PruneError
from ssgr.prune.layers import find_decoder_layers


def _cfg(model, calib, out, **kw):
    kw = {"device": "cpu", "sparsity": "2:4", **kw}
    return PruneConfig(model=str(model), calib=str(calib), out=str(out), **kw)


def _not_finished(out):
    assert not (out / "config.json").exists() and not (out / "prune_report.json").exists()


def test_no_decoder_layers(tmp_path, calib_file):
    src = tiny_model("llama", tmp_path / "m", num_hidden_layers=0)
    with pytest.raises(PruneError, match="no decoder layers found"):
        prune_model(_cfg(src, calib_file, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(PruneError, match="no decoder layers"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_unsupported_module_type(tmp_path, llama_dir, calib_file):
    with pytest.raises(PruneError, match=r"model\.layers\.0\.input_layernorm, a LlamaRMSNorm.*"
                                         r"unsupported module type"):
        prune_model(_cfg(llama_dir, calib_file, tmp_path / "out", targets=["input_layernorm"]))
    with pytest.raises(PruneError, match="no module matches --targets"):
        prune_model(_cfg(llama_dir, calib_file, tmp_path / "out", targets=["nothing_here"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lines,line,match", [
    (['{"input_ids": [1, 2]}', "", '{"input_ids": [3]}'], 2, "empty line"),
    (['{"input_ids": [1, 2]}', '{"input_ids": [1, 2', ], 2, "malformed JSON"),
    (['{"input_ids": [1, 2]}', '[1, 2]'], 2, "must be a JSON object"),
    (['{"input_ids": [1, NaN]}'], 1, "not a finite number"),
    (['{"input_ids": []}'], 1, "empty"),
    (['{"input_ids": [1, "a"]}'], 1, "list of ints"),
    (['{"ids": [1]}'], 1, "no \"input_ids\" or \"text\""),
    (['{"input_ids": [1]}', '{"input_ids": [1, 500]}'], 2, "outside the model's vocabulary"),
    (['{"text": "hello"}'], 1, "tokenizer"),
])
def test_bad_calibration_line(tmp_path, llama_dir, lines, line, match):
    calib = tmp_path / "c.jsonl"
    calib.write_text("\n".join(lines) + "\n")
    with pytest.raises(CalibError, match=rf"c\.jsonl:{line}: .*{match}"):
        prune_model(_cfg(llama_dir, calib, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_empty_calibration_file(tmp_path, llama_dir):
    calib = tmp_path / "c.jsonl"
    calib.write_text("")
    with pytest.raises(CalibError, match="empty"):
        prune_model(_cfg(llama_dir, calib, tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        prune_model(_cfg(llama_dir, tmp_path / "nope.jsonl", tmp_path / "out"))
    with pytest.raises(PruneError, match="--calib .*nope.jsonl does not exist"):
        prune_model(_cfg(llama_dir, tmp_path / "nope.jsonl", tmp_path / "out"))
    with pytest.raises(PruneError, match="MODEL directory .*nomodel does not exist"):
        prune_model(_cfg(tmp_path / "nomodel", calib, tmp_path / "out"))


def test_sequence_longer_than_context(tmp_path, calib_file):
    src = tiny_model("qwen3", tmp_path / "m", max_position_embeddings=100)
    # calib_file's second line has 130 tokens
    with pytest.raises(CalibError, match=r"calib\.jsonl:2: sequence of 130 tokens .* limit of 100"):
        prune_model(_cfg(src, calib_file, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_out_exists_without_overwrite(tmp_path, llama_dir, calib_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(PruneError, match="already exists; pass --overwrite"):
        prune_model(_cfg(llama_dir, calib_file, out))
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(PruneError, match="holds no resumable"):
        prune_model(_cfg(llama_dir, calib_file, out, resume=True))
    with pytest.raises(PruneError, match="source model"):
        prune_model(_cfg(llama_dir, calib_file, llama_dir, overwrite=True))
    # issue #18 item 9: --overwrite removes only what ssgr wrote; it refuses, naming the file
    with pytest.raises(PruneError, match=r"did not write \(keep\.txt\).*move those away"):
        prune_model(_cfg(llama_dir, calib_file, out, overwrite=True))
    assert (out / "keep.txt").read_text() == "user data"
    (out / "keep.txt").unlink()
    rep = prune_model(_cfg(llama_dir, calib_file, out, overwrite=True))
    assert rep["status"] == "complete"
    # --resume of a complete run is a no-op returning its report
    assert prune_model(_cfg(llama_dir, calib_file, out, resume=True))["modules"] == rep["modules"]


@pytest.mark.parametrize("order", ["layer", "module"])
def test_nan_inf_activations_name_layer_and_module(tmp_path, order):
    from safetensors.torch import load_file, save_file

    src = tiny_model("llama", tmp_path / "m")
    f = src / "model.safetensors"
    sd = load_file(str(f))
    sd["model.layers.1.input_layernorm.weight"][3] = float("inf")
    save_file(sd, str(f), metadata={"format": "pt"})
    calib = random_calib(tmp_path / "c.jsonl", [20, 30])
    out = tmp_path / "out"
    with pytest.raises(ActivationError, match=r"layer 1 module model\.layers\.1\.self_attn\."
                                              r"q_proj\+k_proj\+v_proj"):
        prune_model(_cfg(calib=calib, model=src, out=out, sequential=order))
    _not_finished(out)
    st = json.loads((out / ".ssgr_state" / "state.json").read_text())
    assert st["ckpt_layer"] == 1  # layer 0 finished and can be resumed after a fix


def test_bad_arguments(tmp_path, llama_dir, calib_file):
    for kw, match in [({"sparsity": "3:2"}, "N:M"), ({"method": "obs"}, "--method"),
                      ({"sequential": "row"}, "--sequential"), ({"percdamp": 0.0}, "percdamp"),
                      ({"blocksize": 6}, "multiple of M=4"), ({"dtype": "int8"}, "--dtype"),
                      ({"max_activation_memory": "lots"}, "memory size")]:
        with pytest.raises(PruneError, match=match):
            prune_model(_cfg(llama_dir, calib_file, tmp_path / "out", **kw))
    assert not (tmp_path / "out").exists()
