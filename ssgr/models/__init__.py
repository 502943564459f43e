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
from typing import Any

from ssgr.errors import SSGRError

MODEL_NAMES = ("tiny", "smollm2")


class ModelNotFoundError(SSGRError, FileNotFoundError):
    """A model name or directory that does not resolve to a Hugging Face model directory."""


def tiny_dir() -> Path:
    """The packaged tiny model directory (``ssgr/models/tiny``)."""
    d = Path(__file__).resolve().parent / "tiny"
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ModelNotFoundError(
            f"the embedded tiny model is missing from {d} (config.json / model.safetensors); "
            "reinstall ssgr or retrain it with `python -m ssgr.models.train_tiny`"
        )
    return d


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The model directory for ``tiny``, ``smollm2`` or a local directory path.

    Raises :class:`ModelNotFoundError` (a ``FileNotFoundError``) naming the path when it is not
    a model directory.
    """
    name = str(name_or_path)
    if name == "tiny":
        return tiny_dir()
    if name == "smollm2":
        from ssgr.models.smollm2 import smollm2_dir

        return smollm2_dir()
    p = Path(name).expanduser()
    if not p.is_dir():
        raise ModelNotFoundError(
            f"model {name!r} is neither a known name ({', '.join(MODEL_NAMES)}) nor an existing "
            "directory; pass a local Hugging Face model directory"
        )
    if not (p / "config.json").is_file():
        raise ModelNotFoundError(
            f"{p} has no config.json; it is not a Hugging Face model directory"
        )
    return p


#: Files of a model directory whose bytes affect what the model computes or how text is tokenized
#: (hashed by :func:`model_fingerprint`).
_FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".tiktoken", ".jinja")
_FINGERPRINT_SKIP = ("prune_report.json",)


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """Hex sha256 over the content hashes of a model directory's weights, config and tokenizer
    files (top-level ``*.safetensors``, ``*.bin``, ``*.json``, ``*.model``, ``*.txt``,
    ``*.tiktoken``, ``*.jinja``; hidden files and ``prune_report.json`` are left out).

    File hashes come from :func:`ssgr.io.file_sha256` with its cache (keyed on path, inode,
    size and mtime), so an unchanged checkpoint is read once. Two directories with the same
    files byte for byte have the same fingerprint, whatever their paths. Raises
    :class:`ModelNotFoundError` when ``path`` is not a directory.
    """
    import hashlib

    from ssgr.io import file_sha256

    p = Path(path)
    if not p.is_dir():
        raise ModelNotFoundError(f"model {str(p)!r} is not a directory")
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if (f.is_file() and not f.name.startswith(".") and f.name not in _FINGERPRINT_SKIP
                and f.name.endswith(_FINGERPRINT_SUFFIXES)):
            h.update(f"{f.name}\0{file_sha256(f, cache=True)}\n".encode())
    return h.hexdigest()


def default_device() -> str:
    """``cuda`` when available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    path: str | os.PathLike[str], device: str | None = None, dtype: str | None = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a transformers causal LM, on ``device``, in eval mode.

    The one loader of eval and generation. ``path`` is a model directory (see
    :func:`resolve_model`) or a name transformers can load; ``device`` defaults to
    :func:`default_device`; ``dtype`` is a torch dtype name (default bfloat16 on CUDA, float32
    elsewhere). Raises :class:`~ssgr.models.checks.ModelDirError` for a local directory with a
    broken safetensors index or shard header, or no config or tokenizer files (checked before
    any weight is read), and :class:`ModelNotFoundError` when transformers cannot load it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if folder.is_dir():
        from ssgr.models.checks import check_model_dir

        # headers only: a broken index or shard, or missing config/tokenizer files, is named
        # before any weight is read (weights other than safetensors are left to transformers)
        has_safetensors = any(folder.glob("*.safetensors")) or any(folder.glob("*.index.json"))
        check_model_dir(folder, need_weights=has_safetensors, need_tokenizer=True)
    dev = torch.device(device or default_device())
    if dtype is None:
        tdtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        tdtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=tdtype)
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load model {str(path)!r} with transformers: {e}"
        ) from None
    return model.to(dev).eval(), tok


__all__ = [
    "MODEL_NAMES",
    "ModelNotFoundError",
    "default_device",
    "load_model",
    "model_fingerprint",
    "resolve_model",
    "tiny_dir",
]
