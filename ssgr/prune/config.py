"""Configuration of one pruning run: :class:`PruneConfig` and its validation.

Every option of ``ssgr prune`` is a field of :class:`PruneConfig`, declared once with
:func:`ssgr.options.option` (default, help text, choices): ``ssgr prune``'s parser is built from
it (:func:`ssgr.options.add_options`), so the Python API and the command line take the same names
with the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssgr.options import option

from .errors import PruneError
from .methods import METHODS
from .pattern import Pattern, parse_pattern
from .store import parse_bytes

#: Fields of :class:`PruneConfig` that do not change the resulting weights (not fingerprinted).
NOT_NUMERIC = ("out", "offload", "max_activation_memory", "overwrite", "resume",
               "checkpoint_every")


@dataclass
class PruneConfig:
    """Arguments of ``ssgr prune`` / :func:`ssgr.prune.prune_model` (the README explains each)."""

    model: str = option(
        help="Hugging Face causal-LM directory (or hub id where reachable)", positional=True,
        metavar="MODEL")
    calib: str = option(
        help='CALIB.jsonl: one {"input_ids": [...]} or {"text": "..."} per line')
    out: str = option(help="output model directory")
    method: str = option("sparsegpt", help="pruning method", choices=METHODS)
    sparsity: str = option("0.5", help="0.5 (unstructured), 2:4, 4:8 or N:M")
    targets: list[str] | None = option(
        None, metavar="PATTERN",
        help="modules to prune: globs on the full/in-layer/leaf name or re:REGEX "
             "(default: every Linear in the decoder layers)")
    ignore: list[str] | None = option(
        None, metavar="PATTERN", help="modules to leave dense (same syntax as --targets)")
    blocksize: int = option(
        128, help="SparseGPT column block width (a multiple of M for N:M)")
    percdamp: float = option(0.01, help="SparseGPT damping, a fraction of mean(diag H)")
    sequential: str = option(
        "module", choices=("layer", "module"),
        help="layer: every Hessian from one dense pass; module: q/k/v, o, gate/up, down in turn")
    propagate: str = option(
        "pruned", choices=("pruned", "dense"),
        help="feed the next layer the pruned (or the dense) layer's outputs")
    offload: str = option(
        "auto", choices=("auto", "device", "cpu", "disk"), help="where activations are kept")
    max_activation_memory: str = option(
        "8GiB", help="activation-store budget in memory before spilling to disk")
    device: str | None = option(None, help="cpu, cuda or cuda:N (default: cuda if present)")
    dtype: str = option(
        "auto", choices=("auto", "bfloat16", "float16", "float32"),
        help="compute and output dtype (auto: the config's)")
    scope: str = option(
        "row", choices=("row", "layer"),
        help="unstructured ratio per row or per layer (wanda, magnitude)")
    overwrite: bool = option(False, help="replace an existing --out")
    resume: bool = option(False, help="continue an interrupted run of the same command")
    checkpoint_every: int = option(
        1, metavar="N", help="save the activations for --resume every N layers (0: never)")
    max_sequences: int | None = option(None, help="use only the first N calibration lines")
    backend: str | None = option(None, help="force an op backend (see `ssgr info`)")


def validate(cfg: PruneConfig) -> Pattern:
    """Check the options that need no file; returns the parsed sparsity pattern.

    Raises:
        PruneError naming the flag and the accepted values.
    """
    if cfg.method not in METHODS:
        raise PruneError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    try:
        pattern = parse_pattern(cfg.sparsity)
    except ValueError as exc:
        raise PruneError(f"--sparsity: {exc}") from None
    if cfg.sequential not in ("layer", "module"):
        raise PruneError(f"--sequential must be layer or module, got {cfg.sequential!r}")
    if cfg.propagate not in ("pruned", "dense"):
        raise PruneError(f"--propagate must be pruned or dense, got {cfg.propagate!r}")
    if cfg.scope not in ("row", "layer"):
        raise PruneError(f"--scope must be row or layer, got {cfg.scope!r}")
    if cfg.blocksize <= 0 or (pattern.is_nm and cfg.blocksize % pattern.m):
        raise PruneError(f"--blocksize {cfg.blocksize} must be a positive multiple of M={pattern.m}"
                         if pattern.is_nm else f"--blocksize must be positive, got {cfg.blocksize}")
    if not cfg.percdamp > 0:
        raise PruneError(f"--percdamp must be > 0 (0.01 is usual), got {cfg.percdamp}")
    if cfg.checkpoint_every < 0:
        raise PruneError("--checkpoint-every must be >= 0 (0: no activation checkpoints)")
    parse_bytes(cfg.max_activation_memory)
    return pattern


def resolve_device(name: str | None) -> torch.device:
    """``--device``: None, "" or "auto" pick cuda when present, else cpu.

    Raises:
        PruneError for an unavailable CUDA device or a device type other than cpu / cuda.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PruneError(f"--device must be cpu or cuda[:N], got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PruneError(f"--device {name}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise PruneError(f"--device must be cpu or cuda[:N], got {name!r}")
    return dev
