"""Configuration of one pruning run: :class:`PruneConfig` and its validation.

Every option of ``ssgr prune`` is a field of :class:`PruneConfig`, declared once with
:func:`ssgr.options.option` (default, help text, choices): ``ssgr prune``'s parser is built from
it (:func:`ssgr.options.add_options`), so the Python API and the command line take the same names
with the same defaults.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ssgr.options import option

from .errors import OutputError, PruneError, is_disk_full
from .methods import METHODS
from .moe import MOE_CALIBRATION
from .pattern import Pattern, parse_pattern
from .store import parse_bytes

#: Fields of :class:`PruneConfig` that do not change the resulting weights (not fingerprinted).
NOT_NUMERIC = ("out", "offload", "max_activation_memory", "overwrite", "resume",
               "checkpoint_every", "dist_backend", "dist_timeout")


#: Default ``--min-tokens``: a module no calibration token reached falls back to magnitude.
MIN_TOKENS = 1


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
    moe_calibration: str = option(
        "routed", choices=MOE_CALIBRATION,
        help="MoE experts' statistics: routed (each expert's Hessian from the tokens the router "
             "sends it) or all (every token through every expert, for the statistics only; "
             "the layer output still follows the router)")
    min_tokens: int = option(
        MIN_TOKENS, metavar="N",
        help="a module (or MoE expert) whose statistics saw fewer than N calibration tokens, "
             "or only zero inputs, is pruned by magnitude at the same pattern instead (one "
             "WARNING per module, recorded in the report). Default 1: only modules no token "
             "reached, or whose inputs were all zero, fall back (SparseGPT would zero them "
             "entirely); every other result is unchanged. Raise it (e.g. to the input width, "
             "below which a Hessian is rank-deficient) for rarely-routed experts; 0 turns the "
             "policy off (no tokens is then an error, dead inputs are zeroed)")
    overwrite: bool = option(False, help="replace an existing --out")
    resume: bool = option(False, help="continue an interrupted run of the same command")
    checkpoint_every: int = option(
        1, metavar="N", help="save the activations for --resume every N layers (0: never)")
    max_sequences: int | None = option(None, help="use only the first N calibration lines")
    backend: str | None = option(None, help="force an op backend (see `ssgr info`)")
    calib_tokens: str = option(
        "all", choices=("all", "response"),
        help="tokens that feed the Hessians / column norms: all, or only the response (after "
             "each line's \"prompt_tokens\"); every token still runs through the model")
    dist_backend: str = option(
        "auto", choices=("auto", "gloo", "nccl"),
        help="under torchrun: the torch.distributed backend (auto: nccl on CUDA, gloo on CPU)")
    dist_timeout: float = option(
        600.0, metavar="SECONDS",
        help="under torchrun: timeout of each collective; a rank that died or hangs stops the "
             "others after this long at most")


def validate(cfg: PruneConfig) -> Pattern:
    """Check the options that need no file; returns the parsed sparsity pattern.

    Raises:
        PruneError naming the flag and the accepted values: --method, --sparsity, --sequential,
        --propagate, --scope, --blocksize, --percdamp (0, 1], --checkpoint-every >= 0,
        --moe-calibration, --min-tokens >= 0,
        --max-sequences >= 1, an invalid ``re:`` pattern of --targets / --ignore, a --calib
        that is a directory, an unparsable --max-activation-memory.
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
    if not 0 < cfg.percdamp <= 1:  # also refuses NaN
        raise PruneError(f"--percdamp must be in (0, 1] (a fraction of mean(diag H); 0.01 is "
                         f"usual), got {cfg.percdamp}")
    if cfg.checkpoint_every < 0:
        raise PruneError(f"--checkpoint-every must be >= 0 (0: no activation checkpoints), got "
                         f"{cfg.checkpoint_every}")
    if cfg.moe_calibration not in MOE_CALIBRATION:
        raise PruneError(f"--moe-calibration must be routed or all, got {cfg.moe_calibration!r}")
    if isinstance(cfg.min_tokens, bool) or not isinstance(cfg.min_tokens, int) \
            or cfg.min_tokens < 0:
        raise PruneError(f"--min-tokens must be an integer >= 0 (0: no fallback), got "
                         f"{cfg.min_tokens!r}")
    if cfg.max_sequences is not None and cfg.max_sequences < 1:
        raise PruneError(f"--max-sequences must be >= 1, got {cfg.max_sequences}")
    for flag, patterns in (("--targets", cfg.targets), ("--ignore", cfg.ignore)):
        for p in patterns or []:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as exc:
                    raise PruneError(f"{flag} {p}: invalid regular expression ({exc})") from None
    if cfg.calib_tokens not in ("all", "response"):
        raise PruneError(f"--calib-tokens must be all or response, got {cfg.calib_tokens!r}")
    if cfg.calib and Path(cfg.calib).is_dir():
        raise PruneError(f"--calib {cfg.calib} is a directory; pass the CALIB.jsonl file")
    try:
        parse_bytes(cfg.max_activation_memory)
    except PruneError as exc:
        raise PruneError(f"--max-activation-memory: {exc}") from None
    return pattern


def check_out_writable(out: str | Path) -> None:
    """Check before any work that ``--out`` can be created and written: a probe file is made
    and removed in ``out`` (when it exists) or in its nearest existing parent.

    Raises:
        OutputError "cannot write OUT: read-only file system / permission denied / PATH is a
        file (choose another --out)"; a ``--out`` that is itself a file is left to
        :func:`ssgr.prune.state.prepare_out`.
    """
    out = Path(out)
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != out and not probe.is_dir():
        raise OutputError(f"cannot write {out}: {probe} is a file, not a directory (choose "
                          "another --out)")
    if not probe.is_dir():
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ssgr_probe.", dir=probe)
    except OSError as exc:
        why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}.get(exc.errno, exc.strerror or str(exc))
        if is_disk_full(exc):
            why = "the disk is full"
        raise OutputError(f"cannot write {out}: {why} (choose another --out)") from None
    os.close(fd)
    os.unlink(tmp)


def resolve_device(name: str | None) -> torch.device:
    """``--device``: None, "" or "auto" pick cuda when present, else cpu.

    Raises:
        PruneError naming the choices (cpu, cuda, cuda:N) for another device type, and for an
        unavailable CUDA device.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "choose cpu, cuda or cuda:N"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise PruneError(f"--device {name}: not a device ssgr runs on; {choices}") from None
    if dev.type not in ("cpu", "cuda"):
        raise PruneError(f"--device {name}: not a device ssgr runs on; {choices}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PruneError(f"--device {name}: CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PruneError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s), numbered from 0")
    return dev
