"""ssgr.models.checks.check_model_dir: broken model directories (issue #19 item 2).

Each fault of the issue has a sibling of the same kind that the issue does not list: an index that
is a JSON string (sibling of "a list"), a weight_map that is a list (sibling of "lacks it"), an
index naming a missing shard (sibling of "the wrong shard"), a shard with bytes appended (sibling
of "truncated"), a header of the right length that is not JSON (sibling of "garbage"), a config
that is a list (sibling of "no config.json")."""

from __future__ import annotations

import json
import re
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from ssgr.errors import InputError
from ssgr.models.checks import ModelDirError, check_model_dir, read_safetensors_header

INDEX = "model.safetensors.index.json"


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"a.weight": torch.ones(2, 3), "b.weight": torch.zeros(4)}, str(d / "s1.safetensors"))
    save_file({"c.weight": torch.ones(5, dtype=torch.bfloat16)}, str(d / "s2.safetensors"))
    wm = {"a.weight": "s1.safetensors", "b.weight": "s1.safetensors", "c.weight": "s2.safetensors"}
    (d / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return d


def test_good_directory(model_dir):
    info = check_model_dir(model_dir)
    assert info.key_file == {"a.weight": model_dir / "s1.safetensors",
                             "b.weight": model_dir / "s1.safetensors",
                             "c.weight": model_dir / "s2.safetensors"}
    assert info.config == {"model_type": "llama"} and info.tokenizer_files == []
    (model_dir / INDEX).unlink()  # no index: every *.safetensors file is read
    assert set(check_model_dir(model_dir).key_file) == {"a.weight", "b.weight", "c.weight"}
    hdr = read_safetensors_header(model_dir / "s1.safetensors")
    assert hdr["a.weight"]["shape"] == [2, 3] and hdr["a.weight"]["dtype"] == "F32"


@pytest.mark.parametrize("index,match", [
    ("{not json", r"index\.json: the safetensors index is not valid JSON"),
    ('"a string"', r"index\.json: the index is a JSON str"),  # sibling
    ("[1, 2]", r"index\.json: the index is a JSON list"),
    ('{"metadata": {}}', r"index\.json: no \"weight_map\""),
    ('{"weight_map": ["s1.safetensors"]}', r"no \"weight_map\""),  # sibling
    ('{"weight_map": {"a.weight": "s2.safetensors", "b.weight": "s1.safetensors", '
     '"c.weight": "s2.safetensors"}}',
     r"weight_map\['a\.weight'\] names s2\.safetensors, which does not hold that tensor "
     r"\(it is in s1\.safetensors\)"),
    ('{"weight_map": {"a.weight": "s9.safetensors"}}',
     r"names shard s9\.safetensors \(for 'a\.weight'.*missing"),  # sibling
])
def test_broken_index(model_dir, index, match):
    (model_dir / INDEX).write_text(index)
    with pytest.raises(ModelDirError, match=match):
        check_model_dir(model_dir)


def test_truncated_and_garbage_shards(model_dir):
    good = (model_dir / "s2.safetensors").read_bytes()
    shard = model_dir / "s2.safetensors"
    shard.write_bytes(good[:-3])  # truncated download
    with pytest.raises(ModelDirError, match=r"s2\.safetensors: tensor 'c\.weight' ends at byte "
                                            r"10 of the data but the file holds only 7"):
        check_model_dir(model_dir)
    shard.write_bytes(good + b"\0" * 4)  # sibling: bytes after the data
    with pytest.raises(ModelDirError, match=r"s2\.safetensors: 4 bytes after the last tensor"):
        check_model_dir(model_dir)
    shard.write_bytes(b"garbage, not a safetensors file at all")
    with pytest.raises(ModelDirError, match=r"s2\.safetensors: header length \d+ does not fit"):
        check_model_dir(model_dir)
    shard.write_bytes(struct.pack("<Q", 4) + b"{{{{")  # sibling: right length, not JSON
    with pytest.raises(ModelDirError, match=r"s2\.safetensors: the safetensors header is not "
                                            r"valid JSON"):
        check_model_dir(model_dir)
    shard.write_bytes(b"abc")
    with pytest.raises(ModelDirError, match=r"s2\.safetensors: 3 bytes, shorter than"):
        check_model_dir(model_dir)
    hdr = json.dumps({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    shard.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 8)
    with pytest.raises(ModelDirError, match=r"tensor 'x' \(F32 \[3\]\) has data_offsets"):
        check_model_dir(model_dir)


def test_incomplete_directories(tmp_path, model_dir):
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(tmp_path / "nothing")
    with pytest.raises(ModelDirError, match="is a file"):
        check_model_dir(model_dir / "config.json")
    cfg = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text("[1]")  # sibling
    with pytest.raises(ModelDirError, match=r"config\.json: a JSON list, not an object"):
        check_model_dir(model_dir)
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match=r"no \"model_type\""):
        check_model_dir(model_dir)
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelDirError, match="has no config.json"):
        check_model_dir(model_dir)
    (model_dir / "config.json").write_text(cfg)
    with pytest.raises(ModelDirError, match=r"has no tokenizer \(none of tokenizer\.json"):
        check_model_dir(model_dir, need_tokenizer=True)
    (model_dir / "tokenizer.json").write_text("{}")
    assert check_model_dir(model_dir, need_tokenizer=True).tokenizer_files == ["tokenizer.json"]
    (model_dir / INDEX).unlink()
    for f in model_dir.glob("*.safetensors"):
        f.unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelDirError, match=r"holds no \*\.safetensors weights \(found "
                                            r"pytorch_model\.bin\)"):
        check_model_dir(model_dir)
    assert check_model_dir(model_dir, need_weights=False).key_file == {}
    assert issubclass(ModelDirError, InputError)


def test_duplicate_tensor_without_index(model_dir):
    (model_dir / INDEX).unlink()
    shutil.copyfile(model_dir / "s2.safetensors", model_dir / "s3.safetensors")
    with pytest.raises(ModelDirError, match=r"'c\.weight' is in both s2\.safetensors and s3"):
        check_model_dir(model_dir)


def test_load_model_checks_the_directory_first(model_dir):
    """eval, ppl and the hf generator load through ssgr.models.load_model: a broken index is named
    before transformers reads any weight, and so is a directory without tokenizer files."""
    from ssgr.models import load_model

    (model_dir / "tokenizer.json").write_text("{}")
    (model_dir / INDEX).write_text("[1, 2]")
    with pytest.raises(ModelDirError, match=INDEX):
        load_model(model_dir, device="cpu")
    (model_dir / "tokenizer.json").unlink()
    (model_dir / INDEX).unlink()
    with pytest.raises(ModelDirError, match="tokenizer"):
        load_model(model_dir, device="cpu")


@pytest.mark.parametrize("config,match", [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
      "quantization_config": {"quant_method": "gptq", "bits": 4}},
     r"LlamaForCausalLM \(model_type 'llama'\) is a quantized checkpoint .*'gptq'.*unquantized"),
    ({"model_type": "t5", "is_encoder_decoder": True}, r"t5 .*encoder-decoder"),
    ({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
      "text_config": {"model_type": "gemma3_text"}, "vision_config": {}},
     r"Gemma3ForConditionalGeneration .*multimodal.*gemma3_text.*save_pretrained"),
])
def test_prune_support_names_the_class_and_the_fix(config, match):
    from ssgr.models.checks import prune_support

    assert re.search(match, prune_support(config))


def test_prune_support_accepts_dense_causal_lms():
    from ssgr.models.checks import prune_support

    for mt in ("llama", "gemma2", "gpt2", "phi3", "olmo2"):
        assert prune_support({"model_type": mt, "text_config": None}) is None
    assert prune_support({"model_type": "llama", "quantization_config": {}}) is None
