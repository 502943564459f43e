"""The ``prune`` subcommand wiring and ``{"text": ...}`` calibration lines."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from _prune_helpers import state

from ssgr.errors import SSGRError
from ssgr.prune import cli
from ssgr.prune.engine import PruneConfig, prune_model


def test_register_adds_prune_subcommand():
    p = argparse.ArgumentParser(prog="ssgr")
    sub = p.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = p.parse_args(["prune", "M", "--calib", "c.jsonl", "--out", "D", "--sparsity", "2:4",
                         "--targets", "q_proj", "re:mlp", "--offload", "disk",
                         "--max-activation-memory", "1GiB", "--sequential", "layer"])
    assert args.func is cli.run
    assert args.targets == ["q_proj", "re:mlp"] and args.offload == "disk"
    assert args.sequential == "layer" and args.propagate == "pruned" and args.method == "sparsegpt"


def test_text_lines_use_the_model_tokenizer(tmp_path, llama_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    src = tmp_path / "m"
    shutil.copytree(llama_dir, src)
    words = ["<unk>", "<s>"] + [f"w{i}" for i in range(100)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(src)
    text_calib, ids_calib = tmp_path / "t.jsonl", tmp_path / "i.jsonl"
    seqs = [[int(x) for x in torch.randint(2, 102, (n,))] for n in (40, 70)]
    text_calib.write_text("".join(json.dumps({"text": " ".join(f"w{i - 2}" for i in s),
                                              "source": "x"}) + "\n" for s in seqs))
    ids_calib.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    for calib, out in ((text_calib, tmp_path / "a"), (ids_calib, tmp_path / "b")):
        prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(out), sparsity="2:4",
                                device="cpu"))
    a, b = state(tmp_path / "a"), state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").is_file()  # tokenizer copied to the output


def test_model_names_resolve_as_in_the_other_commands(tmp_path, monkeypatch):
    """``ssgr prune tiny`` takes the embedded model, as ``ssgr eval tiny`` does; a directory
    named ``tiny`` in the working directory still wins."""
    from ssgr.models import tiny_dir

    calib = tmp_path / "c.jsonl"
    calib.write_text("".join(json.dumps({"input_ids": [int(x) for x in torch.randint(3, 60, (n,))]})
                             + "\n" for n in (24, 40)))
    monkeypatch.chdir(tmp_path)
    rep = prune_model(PruneConfig(model="tiny", calib=str(calib), out=str(tmp_path / "o"),
                                  sparsity="2:4", device="cpu"))
    assert rep["modules"] and (tmp_path / "o" / "config.json").is_file()
    shutil.copytree(tiny_dir(), tmp_path / "tiny")
    (tmp_path / "tiny" / "config.json").unlink()  # the local folder is taken, and refused
    with pytest.raises(SSGRError, match="config.json"):
        prune_model(PruneConfig(model="tiny", calib=str(calib), out=str(tmp_path / "p"),
                                sparsity="2:4", device="cpu"))
