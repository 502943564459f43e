"""The embedded tiny reasoning model: loads with transformers alone, format, tokenizer,
resolution."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from ssgr.models import resolve_model, tiny_dir
from ssgr.models.tiny import CHAT_TEMPLATE, TINY_DIR, build_tokenizer, tiny_config

FORMAT = re.compile(
    r"^<think> \d+ [-+*] \d+ = \d+(; \d+ [-+*] \d+ = \d+)* </think> \\boxed\{\d+\}$"
)


def test_loads_with_transformers_alone_offline():
    """A fresh interpreter loads the directory with transformers only (ssgr never imported)."""
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = {str(TINY_DIR)!r}
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d)
q = "What is 7 + 5?\\nPlease reason step by step, and put your final answer within \\\\boxed{{}}."
msgs = [{{"role": "user", "content": q}}]
enc = tok.apply_chat_template(
    msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
)
out = model.generate(**enc, max_new_tokens=40, do_sample=False)
print(type(model).__name__, type(tok).__name__, any(m.startswith("ssgr") for m in sys.modules))
print(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    first, answer = r.stdout.strip().splitlines()[-2:]
    assert first == "Qwen2ForCausalLM Qwen2Tokenizer False"
    assert FORMAT.match(answer), answer
    assert answer.startswith("<think> 7 + 5 = 12") and answer.endswith("\\boxed{12}"), answer


def test_directory_contents_and_size():
    d = tiny_dir()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "TRAINING.md"):
        assert (d / f).is_file(), f
    assert (d / "model.safetensors").stat().st_size <= 20 * 2**20
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    text = (d / "TRAINING.md").read_text()
    assert "python -m ssgr.models.train_tiny" in text and "pass@1" in text


def test_every_linear_prunable_2_4_and_4_8():
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir())
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) >= 7 * model.config.num_hidden_layers
    for name, m in linears:
        assert m.in_features % 8 == 0, name


def test_chat_template_and_prompt_format():
    from transformers import AutoTokenizer

    from ssgr.data.generate import format_prompt
    from ssgr.data.problems import arith_problem

    tok = AutoTokenizer.from_pretrained(tiny_dir())
    p = arith_problem(3, seed=0, level=3)
    prompt = format_prompt(tok, p)
    assert prompt.startswith("<|im_start|>user\n" + p.question + "\n")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # every digit is its own token; the solution round-trips through encode/decode
    ids = tok(p.solution, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == p.solution
    assert all(sum(c.isdigit() for c in t) <= 1 for t in tok.convert_ids_to_tokens(ids))
    assert (
        type(tok).__name__ == "Qwen2Tokenizer"
    )  # what transformers always loads for model_type qwen2
    assert "<think>" in tok.convert_ids_to_tokens(ids) and "</think>" in tok.convert_ids_to_tokens(
        ids
    )
    # byte-level: any text round-trips
    assert (
        tok.decode(tok("plain text: héllo Привет", add_special_tokens=False)["input_ids"])
        == "plain text: héllo Привет"
    )


def test_build_tokenizer_deterministic_and_config_checks():
    texts = ["What is 12 + 3?", "<think> 12 + 3 = 15 </think> \\boxed{15}"] * 3
    a, b = build_tokenizer(texts), build_tokenizer(texts)
    assert a.get_vocab() == b.get_vocab() and a.chat_template == CHAT_TEMPLATE
    cfg = tiny_config(len(a), a.eos_token_id, a.pad_token_id, hidden_size=64, num_attention_heads=4)
    assert cfg.hidden_size == 64 and cfg.vocab_size == len(a)
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_config(len(a), a.eos_token_id, a.pad_token_id, intermediate_size=100)
    with pytest.raises(ValueError, match="unknown architecture"):
        tiny_config(len(a), a.eos_token_id, a.pad_token_id, hidden=64)


def test_resolve_model(tmp_path):
    assert resolve_model("tiny") == TINY_DIR
    assert resolve_model(str(TINY_DIR)) == TINY_DIR
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path)
