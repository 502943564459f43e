"""Checks of a Hugging Face model directory before any work (``ssgr prune``, and later eval, ppl
and generate).

:func:`check_model_dir` reads only ``config.json``, the shard index and each safetensors file's
header (its first ``8 + N`` bytes: a little-endian ``u64`` N, then N bytes of JSON naming every
tensor's dtype, shape and ``data_offsets``; format: https://github.com/huggingface/safetensors,
"Format"), so it costs milliseconds even for a 14B checkpoint. Every fault is one
:class:`ModelDirError` naming the file, the key and what is missing or wrong.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ssgr.errors import InputError

INDEX = "model.safetensors.index.json"

#: Files whose presence in a model directory means it has a tokenizer (any one of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

#: Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

#: Largest safetensors header accepted (the safetensors library's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


class ModelDirError(InputError):
    """A model directory that is incomplete or broken; the message names the file and the key."""


@dataclass
class ModelDirInfo:
    """What :func:`check_model_dir` found.

    path: the directory; config: ``config.json`` as a dict; key_file: tensor name -> shard
    path (empty when ``need_weights`` was False); tokenizer_files: the tokenizer files present.
    """

    path: Path
    config: dict
    key_file: dict[str, Path] = field(default_factory=dict)
    tokenizer_files: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str):
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{path}: {what} is not valid UTF-8 (byte {exc.start}); the file is "
                            "corrupt: download or save the model again") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelDirError(f"{path}: {what} is not valid JSON ({exc}); the file is corrupt: "
                            "download or save the model again") from None


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors of one safetensors file, from its header: ``{name: {"dtype", "shape",
    "data_offsets"}}`` (the ``__metadata__`` entry left out). Reads ``8 + N`` bytes.

    Raises:
        ModelDirError naming the file (and the tensor) when the file is shorter than its
        header, the header is not JSON, an entry lacks dtype/shape/data_offsets, a tensor's
        byte range does not match its dtype and shape or lies beyond the file's end (a
        truncated download), or the data area is larger than the tensors (garbage appended).
    """
    size = path.stat().st_size
    fix = "the file is truncated or not a safetensors file: download or save it again"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelDirError(f"{path}: {size} bytes, shorter than a safetensors header; {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelDirError(f"{path}: header length {n} does not fit in the file's {size} "
                                f"bytes; {fix}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelDirError(f"{path}: the safetensors header is not valid JSON ({exc}); {fix}"
                            ) from None
    if not isinstance(header, dict):
        raise ModelDirError(f"{path}: the safetensors header is a {type(header).__name__}, not "
                            f"an object; {fix}")
    data = size - 8 - n
    end_max = 0
    out: dict[str, dict] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        ok = (isinstance(info, dict) and info.get("dtype") in DTYPE_BYTES
              and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) for o in info["data_offsets"]))
        if not ok:
            raise ModelDirError(f"{path}: tensor {key!r} has no valid dtype, shape and "
                                f"data_offsets in the header ({info!r}); {fix}")
        start, end = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        if not 0 <= start <= end or end - start != numel * DTYPE_BYTES[info["dtype"]]:
            raise ModelDirError(
                f"{path}: tensor {key!r} ({info['dtype']} {info['shape']}) has data_offsets "
                f"{info['data_offsets']}, which do not match its size; {fix}")
        if end > data:
            raise ModelDirError(
                f"{path}: tensor {key!r} ends at byte {end} of the data but the file holds "
                f"only {data} data bytes; {fix}")
        end_max = max(end_max, end)
        out[key] = info
    if end_max != data:
        raise ModelDirError(f"{path}: {data - end_max} bytes after the last tensor's data; {fix}")
    return out


def _weights(folder: Path) -> dict[str, Path]:
    index = folder / INDEX
    key_file: dict[str, Path] = {}
    if index.exists():
        wm = _read_json(index, "the safetensors index")
        if not isinstance(wm, dict):
            raise ModelDirError(f"{index}: the index is a JSON {type(wm).__name__}, not an "
                                "object with a \"weight_map\"; save the model again")
        wm = wm.get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise ModelDirError(
                f"{index}: no \"weight_map\" object (tensor name -> shard file) in the index; "
                "save the model again or remove the index (then every *.safetensors file of "
                "the directory is read)")
        for key, shard in wm.items():
            if not isinstance(shard, str) or not shard or Path(shard).name != shard:
                raise ModelDirError(f"{index}: weight_map[{key!r}] is {shard!r}, not the name "
                                    "of a shard file in the directory")
            key_file[key] = folder / shard
        headers = {}
        for shard in sorted(set(key_file.values())):
            if not shard.is_file():
                who = next(k for k, v in key_file.items() if v == shard)
                raise ModelDirError(f"{index} names shard {shard.name} (for {who!r} and others)"
                                    f", which is missing from {folder}")
            headers[shard] = read_safetensors_header(shard)
        for key, shard in key_file.items():
            if key not in headers[shard]:
                where = [s.name for s, h in headers.items() if key in h]
                raise ModelDirError(
                    f"{index}: weight_map[{key!r}] names {shard.name}, which does not hold that "
                    f"tensor ({'it is in ' + ', '.join(where) if where else 'no shard holds it'})"
                    "; save the model again")
        return key_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        others = sorted(f.name for f in folder.iterdir()
                        if f.suffix in (".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5"))
        raise ModelDirError(
            f"{folder} holds no *.safetensors weights"
            + (f" (found {', '.join(others[:3])})" if others else "")
            + "; save the model with save_pretrained(safe_serialization=True) (or convert "
            ".bin/.gguf first)")
    for f in files:
        for key in read_safetensors_header(f):
            if key in key_file:
                raise ModelDirError(f"{folder}: tensor {key!r} is in both {key_file[key].name} "
                                    f"and {f.name}; remove the stale file")
            key_file[key] = f
    return key_file


def check_model_dir(path: str | Path, *, need_weights: bool = True,
                    need_tokenizer: bool = False) -> ModelDirInfo:
    """Check a local model directory before any work; reads only headers.

    Args:
        path: the directory.
        need_weights: check the safetensors weights (the index and every shard header).
        need_tokenizer: require tokenizer files (:data:`TOKENIZER_FILES`).
    Returns:
        :class:`ModelDirInfo`.
    Raises:
        ModelDirError (an :class:`~ssgr.errors.InputError`) naming the file and the key: the
        directory or ``config.json`` missing, ``config.json`` not a JSON object; the index not
        JSON, a list, without ``weight_map``, naming a missing shard or the wrong shard for a
        tensor; a truncated or garbage shard (:func:`read_safetensors_header`); no weights; no
        tokenizer files.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelDirError(f"model directory {folder} "
                            + ("is a file" if folder.exists() else "does not exist")
                            + "; pass a Hugging Face model directory")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ModelDirError(f"{folder} has no config.json; it is not a Hugging Face model "
                            "directory (save it with save_pretrained)")
    config = _read_json(cfg_file, "config.json")
    if not isinstance(config, dict):
        raise ModelDirError(f"{cfg_file}: a JSON {type(config).__name__}, not an object")
    if "model_type" not in config and "architectures" not in config:
        raise ModelDirError(f"{cfg_file}: no \"model_type\" (or \"architectures\") key; it is "
                            "not a transformers model config")
    info = ModelDirInfo(folder, config)
    if need_weights:
        info.key_file = _weights(folder)
    info.tokenizer_files = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if need_tokenizer and not info.tokenizer_files:
        raise ModelDirError(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                            "copy the tokenizer files of the model into it")
    return info


def prune_support(config: dict) -> str | None:
    """Why ``ssgr prune`` cannot prune a model of this ``config.json`` (a dict), or None.

    Read from the config alone, before any weight or calibration line is read: a quantized
    checkpoint (``quantization_config``), an encoder-decoder (``is_encoder_decoder``), a
    multimodal wrapper (``text_config`` with a vision or audio config). Families whose
    attention ssgr cannot run are refused later with their module class (building the skeleton,
    :func:`ssgr.prune.loader.build_skeleton`; capture, :mod:`ssgr.prune.capture`). Each reason
    names what was found and the fix.
    """
    mt = config.get("model_type", "?")
    arch = ", ".join(config.get("architectures") or []) or mt
    q = config.get("quantization_config")
    if isinstance(q, dict) and q:
        method = q.get("quant_method", "unknown")
        return (f"{arch} (model_type {mt!r}) is a quantized checkpoint (quantization_config: "
                f"quant_method {method!r}); ssgr prunes dense floating-point weights: prune the "
                "unquantized model, then quantize")
    if config.get("is_encoder_decoder"):
        return (f"{arch} (model_type {mt!r}) is an encoder-decoder model; ssgr prunes "
                "decoder-only causal LMs (AutoModelForCausalLM)")
    if isinstance(config.get("text_config"), dict) and any(
            isinstance(config.get(k), dict) for k in ("vision_config", "audio_config")):
        text = config["text_config"].get("model_type", "its text model")
        return (f"{arch} (model_type {mt!r}) is a multimodal model; ssgr prunes text-only causal "
                f"LMs: save its language model ({text}) with save_pretrained and prune that")
    return None
