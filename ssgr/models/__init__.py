"""Embedded default models and model-name resolution.

* ``tiny`` - the small Qwen2 reasoning model trained on ``builtin:arith`` and shipped inside the
  package (``ssgr/models/tiny/``; see its ``TRAINING.md`` and :mod:`ssgr.models.train_tiny`);
* ``smollm2`` - SmolLM2-135M-Instruct, converted once from the pip-shipped GGUF file
  (:func:`ssgr.models.smollm2.smollm2_dir`);
* anything else - a local Hugging Face model directory.

Nothing heavy is imported here.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_NAMES = ("tiny", "smollm2")


def tiny_dir() -> Path:
    """The packaged tiny model directory (``ssgr/models/tiny``)."""
    d = Path(__file__).resolve().parent / "tiny"
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the embedded tiny model is missing from {d} (config.json / model.safetensors); "
            "reinstall ssgr or retrain it with `python -m ssgr.models.train_tiny`"
        )
    return d


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The model directory for ``tiny``, ``smollm2`` or a local directory path.

    Raises ``FileNotFoundError`` naming the path when it is not a model directory.
    """
    name = str(name_or_path)
    if name == "tiny":
        return tiny_dir()
    if name == "smollm2":
        from ssgr.models.smollm2 import smollm2_dir

        return smollm2_dir()
    p = Path(name).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"model {name!r} is neither a known name ({', '.join(MODEL_NAMES)}) nor an existing "
            "directory; pass a local Hugging Face model directory"
        )
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} has no config.json; it is not a Hugging Face model directory")
    return p


__all__ = ["MODEL_NAMES", "resolve_model", "tiny_dir"]
