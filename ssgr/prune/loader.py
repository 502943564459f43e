"""Lazy model loading from safetensors shards and incremental writing of the pruned model.

The model is built as a meta-device skeleton (no memory); the tensors outside the decoder layers
(embeddings, final norm, lm_head) are read once, and each decoder layer's tensors are read from the
shards when its turn comes and released after it is written out. The output directory is a normal
Hugging Face model directory: ``config.json``, the tokenizer and generation files copied from the
source, one safetensors shard per decoder layer plus one for the rest, and
``model.safetensors.index.json``. ``config.json`` and the index are written last, so a directory of
an unfinished run never loads as a model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssgr.io import write_json_atomic

from .errors import MissingFileError, PruneError, writing

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
REST_SHARD = "model-rest.safetensors"
_SKIP_COPY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def layer_shard_name(i: int) -> str:
    return f"model-layer-{i:05d}.safetensors"


def resolve_model_dir(model: str) -> Path:
    """A local model directory, a name the other commands take (``tiny``, ``smollm2``:
    :func:`ssgr.models.resolve_model`) when no directory of that name exists here, or a hub
    snapshot where a hub is reachable."""
    from ssgr.models import MODEL_NAMES, resolve_model

    p = Path(model)
    if p.is_dir():
        return p
    if model in MODEL_NAMES:
        return resolve_model(model)
    if p.exists():
        raise PruneError(f"MODEL {model} is a file; pass a Hugging Face model directory")
    if model.count("/") == 1 and not model.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model, allow_patterns=[
                "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]))
        except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear error
            raise MissingFileError(
                f"MODEL {model!r} is not a local directory and could not be downloaded from the "
                f"hub ({type(exc).__name__}: {exc}); pass a local model directory"
            ) from None
    raise MissingFileError(f"MODEL directory {model} does not exist")


class SafetensorsCheckpoint:
    """Key -> shard lookup over a model directory's safetensors files (sharded or not)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        index = folder / INDEX
        self.key_file: dict[str, Path] = {}
        if index.is_file():
            wm = json.loads(index.read_text())["weight_map"]
            self.key_file = {k: folder / v for k, v in wm.items()}
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise MissingFileError(
                    f"{folder} holds no *.safetensors weights; save the model with "
                    "save_pretrained(safe_serialization=True) (or convert .bin/.gguf first)"
                )
            for f in files:
                with safe_open(str(f), framework="pt") as sf:
                    for k in sf.keys():
                        self.key_file[k] = f
        for f in set(self.key_file.values()):
            if not f.is_file():
                raise MissingFileError(f"{folder}/{INDEX} names {f.name}, which does not exist")

    def keys(self) -> list[str]:
        return list(self.key_file)

    def load(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Read ``keys`` (CPU tensors), opening each shard once."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.key_file[k], []).append(k)
        out = {}
        for f, ks in by_file.items():
            with safe_open(str(f), framework="pt") as sf:
                for k in ks:
                    out[k] = sf.get_tensor(k)
        return out



class KeyConversion:
    """transformers' own checkpoint conversion, applied one decoder layer at a time.

    transformers 5 builds Mixture-of-Experts layers (Qwen2-MoE, Qwen3-MoE, Mixtral, ...) with the
    experts fused into 3-D parameters (``mlp.experts.gate_up_proj[E, 2I, H]``,
    ``mlp.experts.down_proj[E, H, I]``), while checkpoints store them per expert
    (``mlp.experts.0.gate_proj.weight``, Mixtral's ``block_sparse_moe.experts.0.w1.weight``) or
    already fused. ``from_pretrained`` fuses them on load with the per-family rules of
    ``transformers.conversion_mapping`` (``WeightConverter`` / ``WeightRenaming`` with
    ``MergeModulelist`` and ``Concatenate``) and splits them again on save
    (``transformers.core_model_loading.revert_weight_conversion``). This class runs exactly those
    rules, with transformers' own functions, on the subset of keys one layer needs, so the engine
    keeps streaming layer by layer; no key map is written here.

    Args:
        model: the meta skeleton (its classes and configs select the family's rules).
        keys: every checkpoint key.
    """

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )

        self.model = model
        transforms = get_model_conversion_mapping(model, add_legacy=True)
        self._renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        self._converters = [t for t in transforms if isinstance(t, WeightConverter)]
        #: checkpoint key -> (model key, the converter source pattern that matched or None);
        #: in natural key order (expert 10 after expert 9), the order converters stack tensors in
        self.target: dict[str, tuple[str, str | None]] = {}
        for k in sorted(keys, key=dot_natural_key):
            self.target[k] = rename_source_key(k, self._renamings, self._converters)
        self.converted = any(p is not None or t != k for k, (t, p) in self.target.items())

    def source_keys(self, prefix: str, inside: bool = True) -> list[str]:
        """Checkpoint keys whose model key lies under ``prefix.`` (``inside``) or outside it."""
        return [k for k, (t, _) in self.target.items()
                if t.startswith(prefix + ".") == inside]

    def convert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint tensors (``{checkpoint key: tensor}``) -> ``{model key: tensor}``, fusing
        per-expert tensors with the family's ``WeightConverter``s as ``from_pretrained`` does.

        Raises:
            PruneError naming the keys when a converter cannot be applied (e.g. an expert
            missing from the checkpoint).
        """
        from copy import deepcopy

        by_pattern = {p: c for c in self._converters for p in c.source_patterns}
        out: dict[str, torch.Tensor] = {}
        pending: dict = {}
        for k in [k for k in self.target if k in tensors]:
            tgt, pat = self.target[k]
            if pat is None:
                out[tgt] = tensors[k]
                continue
            conv = pending.setdefault(tgt, deepcopy(by_pattern[pat]))
            conv.add_tensor(tgt, k, pat, tensors[k])
        for tgt, conv in pending.items():
            try:
                res = conv.convert(tgt, model=self.model, config=self.model.config)
            except Exception as exc:  # noqa: BLE001 - any conversion failure names the keys
                raise PruneError(
                    f"cannot convert the checkpoint tensors of {tgt} with transformers' "
                    f"conversion ({type(conv).__name__} {conv.source_patterns} -> "
                    f"{conv.target_patterns}): {type(exc).__name__}: {exc}; is the checkpoint "
                    "complete (every expert present) and config.json its own?") from None
            for name, v in res.items():
                out[name] = v[0] if isinstance(v, list) else v
        return out

    def revert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{model key: tensor}`` -> the layout ``save_pretrained`` writes (per-expert tensors
        split again), with ``transformers.core_model_loading.revert_weight_conversion`` (the
        identity for families without conversion rules)."""
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(self.model, tensors)

_HEADER_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def checkpoint_dtypes(ckpt: SafetensorsCheckpoint) -> dict[str, int]:
    """Bytes per floating-point dtype over the checkpoint's tensors, read from the safetensors
    headers (no tensor data): e.g. ``{"BF16": 270000000}``."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for k, f in ckpt.key_file.items():
        by_file.setdefault(f, []).append(k)
    out: dict[str, int] = {}
    for f, ks in by_file.items():
        with safe_open(str(f), framework="pt") as sf:
            for k in ks:
                sl = sf.get_slice(k)
                dt = sl.get_dtype()
                if dt.startswith(("F", "BF")):
                    numel = 1
                    for n in sl.get_shape():
                        numel *= n
                    out[dt] = out.get(dt, 0) + numel * _itemsize(dt)
    return out


def resolve_dtype(name: str, config, ckpt: SafetensorsCheckpoint | None = None) -> torch.dtype:
    """``--dtype``: the compute and output dtype.

    ``auto`` keeps the checkpoint's own dtype, read from its safetensors headers (``ckpt``): a
    bf16 checkpoint is pruned and written in bf16, an fp16 one in fp16, a float32 one in float32.
    A mixed checkpoint (several floating dtypes) uses the dtype its config names
    (``dtype`` / ``torch_dtype``) when that is one of them, else float32 (which holds bf16 and
    fp16 values exactly), with a WARNING. Without ``ckpt`` (or without floating tensors) the
    config's dtype is used, float32 when it names none.

    Raises:
        PruneError for a name other than auto, bfloat16, float16 or float32.
    """
    if name not in _DTYPES and name != "auto":
        raise PruneError(f"--dtype must be auto, bfloat16, float16 or float32, got {name!r}")
    if name != "auto":
        return _DTYPES[name]
    d = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    if isinstance(d, str):
        d = _DTYPES.get(d.removeprefix("torch."))
    conf_dtype = d if isinstance(d, torch.dtype) else None
    found = checkpoint_dtypes(ckpt) if ckpt is not None else {}
    if not found:
        return conf_dtype or torch.float32
    if len(found) == 1:
        dt = next(iter(found))
        if dt in _HEADER_DTYPES:
            return _HEADER_DTYPES[dt]
    kinds = {_HEADER_DTYPES.get(k) for k in found}
    pick = conf_dtype if conf_dtype in kinds else torch.float32
    log.warning(
        "--dtype auto: the checkpoint mixes floating dtypes (%s); computing and writing in %s "
        "(%s); pass --dtype to choose", ", ".join(f"{k} {v} bytes" for k, v in
                                               sorted(found.items())),
        str(pick).removeprefix("torch."),
        "the config's dtype" if pick is conf_dtype else "float32 holds bf16 and fp16 exactly")
    return pick


def load_config(folder: Path):
    """The folder's ``config.json`` as a transformers ``PretrainedConfig``, after the early
    family check (:func:`ssgr.models.checks.prune_support`).

    Raises:
        PruneError when it is missing or unreadable, or names a model ssgr cannot prune (the
        reason and the fix).
    """
    from transformers import AutoConfig

    from ssgr.models.checks import prune_support

    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PruneError(f"cannot read {folder}/config.json: {exc}") from None
    why = prune_support(raw) if isinstance(raw, dict) else None
    if why:
        raise PruneError(f"{folder}: {why}")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise PruneError(f"cannot read {folder}/config.json: {exc}") from None


def build_skeleton(folder: Path, dtype: torch.dtype, config=None) -> nn.Module:
    """``AutoModelForCausalLM`` from the folder's config (or ``config``, read once by the
    caller with :func:`load_config`) on the meta device, parameters in ``dtype``.

    Attention runs through ssgr's registered implementation (:data:`ssgr.prune.capture.ATTENTION`:
    SDPA with the causal flag, sliding windows and soft-capping in blocks, never a ``t x t``
    mask). transformers ``Conv1D`` projections of the decoder layers (GPT-2: weight stored
    ``[in, out]``) are replaced by :class:`~ssgr.prune.layers.Conv1DLinear`, an ``nn.Linear``
    that reads and writes the checkpoint's ``[in, out]`` layout, so they are pruned as linear
    maps ``[out, in]`` like every other projection.

    Raises:
        PruneError when the config is unreadable or not a supported causal LM.
    """
    from transformers import AutoModelForCausalLM

    from .capture import register_attention
    from .layers import find_decoder_layers, linearise_conv1d

    if config is None:
        config = load_config(folder)
    attn = register_attention() if _uses_attention_interface(config) else "sdpa"
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn,
                                                     dtype=dtype)
        except ValueError as exc:
            if "scaled_dot_product_attention" in str(exc):
                import transformers

                cls = str(exc).split(" ", 1)[0]
                raise PruneError(
                    f"{folder}: {cls} (model_type {config.model_type!r}) has no SDPA attention "
                    f"in transformers {transformers.__version__}; ssgr runs attention through "
                    "SDPA (or its own blocked form), so this family is not supported") from None
            raise PruneError(f"{folder}: not a supported causal LM ({exc})") from None
        _, layers = find_decoder_layers(model)
        for layer in layers:
            linearise_conv1d(layer)
    return model.eval()


def _uses_attention_interface(config) -> bool:
    """Does the config's causal-LM class compute attention through transformers'
    ``ALL_ATTENTION_FUNCTIONS`` (so ssgr's registered implementation is used)? Families with
    their own per-implementation attention classes or ``== "sdpa"`` branches (Falcon and other
    older ports) are built with plain ``"sdpa"`` instead: an unknown name there would select
    their eager path or fail."""
    import inspect
    import sys

    from transformers import AutoModelForCausalLM

    try:
        cls = AutoModelForCausalLM._model_mapping[type(config)]
        src = inspect.getsource(sys.modules[cls.__module__])
    except (KeyError, OSError, TypeError, ValueError):
        return False
    legacy = ('_attn_implementation == "sdpa"' in src or "_ATTENTION_CLASSES[" in src
              or '_attn_implementation != "sdpa"' in src)
    return "ALL_ATTENTION_FUNCTIONS" in src and not legacy


def _materialise_buffers(mod: nn.Module, config, init=None) -> None:
    """Re-create on CPU the non-persistent buffers still on meta (rotary tables, Gemma's
    embedding scale) of the modules outside the decoder layers, once their parameters are loaded.

    A module built from the config (rotary embeddings) is built again on CPU; any other one gets
    its buffers from the model's own ``_init_weights`` (``init``, the top-level model's, as
    transformers' ``from_pretrained`` does), its loaded parameters marked initialised so they
    are kept.

    Raises:
        PruneError naming the module when a buffer cannot be re-created.
    """
    if init is None:
        init = getattr(mod, "_init_weights", None)
    for name, child in list(mod.named_children()):
        metas = [b for b in child.buffers(recurse=False) if b.is_meta]
        has_meta_params = any(p.is_meta for p in child.parameters(recurse=False))
        if metas and not has_meta_params:
            cfg = getattr(child, "config", config)
            try:
                with torch.device("cpu"):
                    new = type(child)(config=cfg)
            except TypeError:
                new = None
            if new is not None:
                setattr(mod, name, new)
                continue
            if init is None:
                raise PruneError(
                    f"cannot materialise buffers of {name} ({type(child).__name__}): it is not "
                    "built from a config and the model has no _init_weights; this model family "
                    "is not supported")
            for bname, b in list(child.named_buffers(recurse=False)):
                if b.is_meta:
                    setattr(child, bname, torch.empty_like(b, device="cpu"))
            for p in child.parameters(recurse=False):
                p._is_hf_initialized = True
            with torch.no_grad():
                init(child)
            left = [bn for bn, b in child.named_buffers(recurse=False) if b.is_meta]
            if left:
                raise PruneError(
                    f"cannot materialise buffers {left} of {name} ({type(child).__name__}); "
                    "this model family is not supported")
        else:
            _materialise_buffers(child, config, init)


def load_outside_layers(
    model: nn.Module, ckpt: SafetensorsCheckpoint, layer_prefix: str, dtype: torch.dtype,
    conv: KeyConversion | None = None,
) -> dict[str, torch.Tensor]:
    """Load every checkpoint tensor outside the decoder layers into ``model`` (CPU, ``dtype``).

    conv: transformers' checkpoint conversion (:class:`KeyConversion`); None reads the keys as
    they are. Returns those tensors under the model's names (floating ones in ``dtype``).
    """
    if conv is None:
        keys = [k for k in ckpt.keys() if not k.startswith(layer_prefix + ".")]
        tensors = ckpt.load(keys)
    else:
        tensors = conv.convert(ckpt.load(conv.source_keys(layer_prefix, inside=False)))
        keys = list(tensors)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    emb = model.get_input_embeddings()
    if emb is None or emb.weight.is_meta:
        raise PruneError(
            f"{ckpt.folder}: the input embeddings were not found in the checkpoint (keys outside "
            f"{layer_prefix}: {', '.join(keys[:5])}...); the checkpoint does not match its config"
        )
    _materialise_buffers(model, model.config)
    return tensors


def load_layer(
    layer: nn.Module, ckpt: SafetensorsCheckpoint, prefix: str, device: torch.device,
    dtype: torch.dtype, conv: KeyConversion | None = None,
) -> None:
    """Read decoder layer ``prefix`` (e.g. ``model.layers.3``) from the shards into ``layer``.

    conv: transformers' checkpoint conversion (:class:`KeyConversion`: per-expert checkpoint
    tensors are fused into the layer's 3-D expert parameters as ``from_pretrained`` does); None
    reads the keys as they are.

    Raises:
        PruneError naming the layer and the missing / unexpected tensors when the checkpoint
        does not match the model.
    """
    want = set(layer.state_dict().keys())
    if conv is None:
        loaded = ckpt.load([k for k in ckpt.keys() if k.startswith(prefix + ".")])
    else:
        loaded = conv.convert(ckpt.load(conv.source_keys(prefix)))
    sd = {k[len(prefix) + 1:]: v for k, v in loaded.items()}
    missing, extra = want - set(sd), set(sd) - want
    if missing or extra:
        raise PruneError(
            f"layer {prefix}: checkpoint tensors do not match the model (missing: "
            f"{sorted(missing)[:4]}, unexpected: {sorted(extra)[:4]}); is config.json the "
            "checkpoint's own?"
        )
    sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
          for k, v in sd.items()}
    layer.load_state_dict(sd, strict=True, assign=True)
    for n, b in layer.named_buffers():
        if b.is_meta:
            raise PruneError(
                f"layer {prefix}: buffer {n} is not stored in the checkpoint; layers with "
                "computed buffers are not supported"
            )


def release_layer(layer: nn.Module) -> None:
    """Move a layer back to the meta device (frees its memory)."""
    layer.to("meta")


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors shard atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "pt"})
        os.replace(tmp, path)


def layer_tensors(layer: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The layer's state dict under its checkpoint names."""
    return {f"{prefix}.{k}": v for k, v in layer.state_dict().items()}


def copied_files(src: Path) -> list[str]:
    """Names of the source directory's files copied into the output (tokenizer, generation
    config, ...: every plain file except weights, config.json, the index, a report and hidden
    files)."""
    return [f.name for f in sorted(src.iterdir())
            if f.is_file() and f.name not in ("config.json", INDEX, "prune_report.json")
            and not f.name.endswith(_SKIP_COPY_SUFFIXES) and not f.name.startswith(".")]


@dataclass
class OutputWriter:
    """Writes the pruned model directory ``out``; :meth:`finish` makes it loadable."""

    src: Path
    out: Path
    dtype: torch.dtype

    #: transformers' checkpoint conversion: tensors are written in the layout ``save_pretrained``
    #: writes (:meth:`KeyConversion.revert`: MoE experts per expert); None writes model keys.
    conv: KeyConversion | None = None

    def _saved(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return tensors if self.conv is None else self.conv.revert(tensors)

    def write_rest(self, tensors: dict[str, torch.Tensor]) -> None:
        save_shard(self._saved(tensors), self.out / REST_SHARD)

    def write_layer(self, i: int, tensors: dict[str, torch.Tensor]) -> None:
        save_shard(self._saved(tensors), self.out / layer_shard_name(i))

    def finish(self, num_layers: int) -> None:
        """Write the index, copy tokenizer/generation files, then config.json (last)."""
        from safetensors import safe_open

        weight_map, total = {}, 0
        for name in [REST_SHARD] + [layer_shard_name(i) for i in range(num_layers)]:
            with safe_open(str(self.out / name), framework="pt") as sf:
                for k in sf.keys():
                    weight_map[k] = name
                    sl = sf.get_slice(k)
                    numel = 1
                    for s in sl.get_shape():
                        numel *= s
                    total += numel * _itemsize(sl.get_dtype())
        with writing(self.out / INDEX):
            write_json_atomic(self.out / INDEX,
                              {"metadata": {"total_size": total}, "weight_map": weight_map})
        for name in copied_files(self.src):
            with writing(self.out / name):
                shutil.copyfile(self.src / name, self.out / name)
        cfg = json.loads((self.src / "config.json").read_text())
        name = str(self.dtype).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = name
        with writing(self.out / "config.json"):
            write_json_atomic(self.out / "config.json", cfg)


def _itemsize(dt: str) -> int:
    return {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
            "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}.get(dt, 1)
