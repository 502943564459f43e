"""Streaming per-layer pruning engine (DESIGN section 4).

``prune_model(PruneConfig(...))`` prunes a Hugging Face causal LM directory one decoder layer at a
time and writes a loadable pruned model directory plus ``prune_report.json``:

1. The model is a meta-device skeleton; tensors outside the decoder layers are read once (CPU).
2. Capture: every calibration sequence is run alone (batch 1, never padded) through the embeddings
   until a pre-hook on layer 0 records its hidden states ``x[1, t, d]`` and the keyword arguments
   the model passes to its layers (rotary ``position_embeddings`` for that length, positions).
   The attention mask must be None (SDPA then uses its causal flag; no ``t x t`` mask is built).
3. For each layer: read its tensors from the shards onto the device, collect one
   :class:`~ssgr.ops.HessianAccumulator` per distinct module input (q/k/v share one, gate/up share
   one), prune, produce the next layer's inputs, write the layer's shard, checkpoint the
   activations for ``--resume``, release the layer.

Orders: ``layer`` (every Hessian of the layer from one dense pass, then one pass through the pruned
layer: llm-compressor's order) and ``module`` (q/k/v, then o, then gate/up, then down, each Hessian
taken after the earlier groups are pruned; the attention output's input to o_proj is kept in the
activation store, so attention runs once per layer). ``--propagate dense`` feeds the next layer the
dense layer's outputs instead of the pruned one's.

Resume state lives in ``DIR/.ssgr_state/``: ``state.json`` (fingerprint of the numerics-relevant
arguments, calibration file and checkpoint; the layer whose inputs are saved), ``acts/L<k>/`` (those
inputs) and ``reports.json``. ``config.json``, the shard index and ``prune_report.json`` are written
only when every layer is done, and the state folder is removed last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ssgr.ops import HessianAccumulator

from . import loader
from .calib import MAX_TOKENS, file_sha256, load_calibration
from .errors import ActivationError, PruneError
from .layers import (
    LayerPlan, _Stop, find_decoder_layers, group_name, layer_output, plan_layer, select_targets,
)
from .methods import METHODS, prune_weight
from .pattern import Pattern, parse_pattern
from .report import ModuleRecord, format_table, peak_rss_bytes
from .store import ActivationStore, choose_store, fmt_bytes, parse_bytes

log = logging.getLogger(__name__)

STATE_DIR = ".ssgr_state"
REPORT = "prune_report.json"
PROBE_TOKENS = 32
#: Fields of :class:`PruneConfig` that do not change the resulting weights (not fingerprinted).
_NOT_NUMERIC = ("out", "offload", "max_activation_memory", "overwrite", "resume",
                "checkpoint_every")


@dataclass
class PruneConfig:
    """Arguments of ``ssgr prune`` (see the README for each flag)."""

    model: str
    calib: str
    out: str
    method: str = "sparsegpt"
    sparsity: str = "0.5"
    targets: list[str] | None = None
    ignore: list[str] | None = None
    blocksize: int = 128
    percdamp: float = 0.01
    sequential: str = "module"
    propagate: str = "pruned"
    offload: str = "auto"
    max_activation_memory: str = "8GiB"
    device: str | None = None
    dtype: str = "auto"
    scope: str = "row"
    overwrite: bool = False
    resume: bool = False
    checkpoint_every: int = 1
    max_sequences: int | None = None
    backend: str | None = None


@dataclass
class _Timer:
    device: torch.device
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("capture", "forward", "hessian", "obs", "io", "checkpoint"), 0.0))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, key: str, t0: float) -> float:
        self.sync()
        t = time.perf_counter()
        self.seconds[key] += t - t0
        return t


def _validate(cfg: PruneConfig) -> Pattern:
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


def _device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PruneError(f"--device {name}: CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise PruneError(f"--device must be cpu or cuda[:N], got {name!r}")
    return dev


def _fingerprint(cfg: PruneConfig, src: Path, device: torch.device) -> str:
    d = {k: v for k, v in asdict(cfg).items() if k not in _NOT_NUMERIC}
    d["model"] = str(src.resolve())
    d["calib"] = file_sha256(cfg.calib)
    d["device"] = device.type
    d["weights"] = sorted((f.name, f.stat().st_size) for f in src.glob("*.safetensors"))
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _prepare_out(cfg: PruneConfig, src: Path, fp: str) -> tuple[Path, dict | None, bool]:
    """Check ``--out`` against ``--overwrite`` / ``--resume``; returns (dir, resume state, whether
    the existing directory must be removed before the run starts)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PruneError(f"--out {out} exists and is not a directory; pick another path")
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise PruneError(f"--out {out} would overwrite the source model {src}; pick another path")
    state_file = out / STATE_DIR / "state.json"
    if out.exists() and any(out.iterdir()):
        if cfg.resume and state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("fingerprint") != fp:
                raise PruneError(
                    f"--resume: {out} was started with different arguments, calibration data or "
                    "model (the fingerprint differs); rerun the original command with --resume, "
                    "or use --overwrite to start over"
                )
            return out, state, False
        if cfg.resume and (out / REPORT).is_file():
            return out, {"complete": True}, False
        if cfg.overwrite:
            return out, None, True
        if cfg.resume:
            raise PruneError(f"--resume: {out} holds no resumable ssgr run (no {STATE_DIR}/"
                             "state.json); use --overwrite to replace it")
        raise PruneError(f"--out {out} already exists; pass --overwrite to replace it, --resume "
                         "to continue an interrupted run, or choose another directory")
    return out, None, False


class _Engine:
    """One pruning run; see :func:`prune_model`."""

    def __init__(self, cfg: PruneConfig) -> None:
        self.cfg = cfg
        self.t_start = time.perf_counter()
        self.pattern = _validate(cfg)
        self.device = _device(cfg.device)
        self.timer = _Timer(self.device)
        self.records: list[ModuleRecord] = []

    # ---------------------------------------------------------------- setup
    def setup(self) -> dict | None:
        cfg = self.cfg
        self.src = loader.resolve_model_dir(cfg.model)
        if not Path(cfg.calib).is_file():
            raise FileNotFoundError(f"--calib {cfg.calib} does not exist")
        fp = _fingerprint(cfg, self.src, self.device)
        self.out, state, self.remove_out = _prepare_out(cfg, self.src, fp)
        if state and state.get("complete"):
            return json.loads((self.out / REPORT).read_text())
        self.state = state
        self.fp = fp
        config_probe = loader.build_skeleton(self.src, torch.float32).config
        self.dtype = loader.resolve_dtype(cfg.dtype, config_probe)
        self.model = loader.build_skeleton(self.src, self.dtype)
        self.layer_prefix, self.layers = find_decoder_layers(self.model)
        self.ckpt = loader.SafetensorsCheckpoint(self.src)
        self.targets = [select_targets(layer, f"{self.layer_prefix}.{i}", cfg.targets, cfg.ignore)
                        for i, layer in enumerate(self.layers)]
        if not any(self.targets):
            lin = [n for n, m in self.layers[0].named_modules() if isinstance(m, nn.Linear)]
            raise PruneError(
                f"no module matches --targets {cfg.targets or ['<every Linear>']} (minus --ignore "
                f"{cfg.ignore or []}); the Linear modules of a layer are: {', '.join(lin)}"
            )
        conf = self.model.config
        ctx = getattr(conf, "max_position_embeddings", None) or MAX_TOKENS
        self.max_tokens = min(int(ctx), MAX_TOKENS)
        self.seqs = load_calibration(
            cfg.calib, vocab_size=int(conf.vocab_size), max_tokens=self.max_tokens,
            tokenize=self._tokenizer(), max_sequences=cfg.max_sequences,
        )
        longest = max(s.tokens for s in self.seqs)
        for name, mod in self.model.named_modules():
            win = getattr(mod, "sliding_window", None)
            if isinstance(win, int) and win > 0 and longest > win:
                raise PruneError(
                    f"{name} uses a sliding window of {win} tokens but a calibration sequence has "
                    f"{longest}; SDPA's causal flag cannot express the window: keep sequences "
                    f"<= {win} tokens"
                )
        return None

    def _tokenizer(self):
        names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if not any((self.src / n).is_file() for n in names):
            return None
        tok_box: list = []

        def tokenize(text: str) -> list[int]:
            if not tok_box:
                from transformers import AutoTokenizer

                try:
                    tok_box.append(AutoTokenizer.from_pretrained(self.src))
                except (OSError, ValueError) as exc:
                    raise PruneError(f"{self.src}: cannot load the tokenizer for \"text\" "
                                     f"calibration lines ({exc}); give \"input_ids\"") from None
            return tok_box[0](text)["input_ids"]

        return tokenize

    # ---------------------------------------------------------------- capture
    @torch.no_grad()
    def capture(self, keep_hidden: bool) -> None:
        """Layer-0 inputs of every sequence (into slot ``in`` when ``keep_hidden``) and the
        per-length layer keyword arguments."""
        t0 = time.perf_counter()
        layer0 = self.layers[0]
        box: dict = {}

        def hook(_m, args, kwargs):
            box["x"] = args[0] if args else kwargs["hidden_states"]
            box["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _Stop

        h = layer0.register_forward_pre_hook(hook, with_kwargs=True)
        self.kwargs_by_len: dict[int, dict] = {}
        kw_dev = self.device if self.store.kind == "device" else torch.device("cpu")
        try:
            for i, s in enumerate(tqdm(self.seqs, desc="capture layer-0 inputs", unit="seq",
                                       leave=False)):
                box.clear()
                try:
                    self.model(input_ids=s.input_ids, use_cache=False)
                except _Stop:
                    pass
                if "x" not in box:
                    raise PruneError("the model's forward never reached its first decoder layer")
                kw = box["kw"]
                if kw.get("attention_mask") is not None:
                    raise PruneError(
                        "the model builds an explicit attention mask for an unpadded sequence "
                        "(sliding window or a non-SDPA attention); ssgr runs attention through "
                        "SDPA's causal flag only, so this model is not supported"
                    )
                if kw.get("past_key_values") is not None:
                    raise PruneError("the model passes a KV cache to its layers with "
                                     "use_cache=False; it is not supported")
                if s.tokens not in self.kwargs_by_len:
                    self.kwargs_by_len[s.tokens] = _to_device(kw, kw_dev)
                if keep_hidden:
                    self.store.put("in", i, box["x"].to(self.dtype))
        finally:
            h.remove()
        self.timer.add("capture", t0)

    def layer_kwargs(self, i: int) -> dict:
        return _to_device(self.kwargs_by_len[self.seqs[i].tokens], self.device)

    # ---------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg
        conf = self.model.config
        hidden = int(conf.hidden_size)
        tokens = sum(s.tokens for s in self.seqs)
        slots = 3 if cfg.sequential == "module" else 2
        esize = torch.empty((), dtype=self.dtype).element_size()
        need = slots * tokens * hidden * esize
        reserve = self._layer_bytes() + 4 * 4 * int(getattr(conf, "intermediate_size", hidden)) ** 2
        kind, reason = choose_store(cfg.offload, self.device, need, parse_bytes(
            cfg.max_activation_memory), reserve)
        state_dir = self.out / STATE_DIR
        if self.remove_out:
            log.warning("--overwrite: removing %s", self.out)
            shutil.rmtree(self.out)
        self.store = ActivationStore(kind, self.device, state_dir / "store")
        self.store_info = {"kind": kind, "reason": reason, "estimate_bytes": need}
        log.info("activation store: %s (%s)", kind, reason)

        start = 0
        if self.state is not None:
            start = int(self.state["ckpt_layer"])
            self.records = [ModuleRecord(**r) for r in json.loads(
                (state_dir / "reports.json").read_text())]
            self.records = [r for r in self.records if r.layer < start]
            log.info("resuming %s at layer %d", self.out, start)
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            _write_json(state_dir / "reports.json", [])
            self._save_state(0)
        writer = loader.OutputWriter(self.src, self.out, self.dtype)
        t0 = time.perf_counter()
        rest = loader.load_outside_layers(self.model, self.ckpt, self.layer_prefix, self.dtype)
        writer.write_rest(rest)
        del rest
        self.timer.add("io", t0)
        self.capture(keep_hidden=start == 0)
        if start > 0:
            t0 = time.perf_counter()
            n = self.store.load_slot("in", state_dir / "acts" / f"L{start}")
            if n != len(self.seqs):
                raise PruneError(f"{state_dir}: checkpoint holds {n} sequences, expected "
                                 f"{len(self.seqs)}; use --overwrite to start over")
            self.timer.add("io", t0)

        n_layers = len(self.layers)
        bar = tqdm(range(start, n_layers), desc=f"{cfg.method} {self.pattern}", unit="layer",
                   initial=start, total=n_layers)
        for li in bar:
            self._do_layer(li, writer)
            bar.set_postfix(store=fmt_bytes(self.store.peak_bytes))
            delay = float(os.environ.get("SSGR_DEBUG_LAYER_SLEEP", "0") or 0)
            if delay > 0:  # a testing aid: slows a run so a test can kill it between layers
                time.sleep(delay)
        bar.close()

        t0 = time.perf_counter()
        writer.finish(n_layers)
        self.timer.add("io", t0)
        report = self._report(start)
        _write_json(self.out / REPORT, report)
        self.store.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        return report

    def _layer_bytes(self) -> int:
        esize = torch.empty((), dtype=self.dtype).element_size()
        return sum(p.numel() for p in self.layers[0].parameters()) * esize

    def _save_state(self, ckpt_layer: int) -> None:
        _write_json(self.out / STATE_DIR / "state.json", {
            "fingerprint": self.fp, "ckpt_layer": ckpt_layer, "layers": len(self.layers),
            "sequences": len(self.seqs),
        })

    @torch.no_grad()
    def _do_layer(self, li: int, writer: loader.OutputWriter) -> None:
        cfg = self.cfg
        prefix = f"{self.layer_prefix}.{li}"
        layer = self.layers[li]
        t0 = time.perf_counter()
        loader.load_layer(layer, self.ckpt, prefix, self.device, self.dtype)
        self.timer.add("io", t0)
        targets = self.targets[li]
        if not targets:
            self._forward_all(li, layer, "out")
        else:
            x0 = self.store.get("in", 0)[:, :PROBE_TOKENS]
            kw0 = _slice_kwargs(self.layer_kwargs(0), x0.shape[1], self.seqs[0].tokens)
            plan = plan_layer(layer, targets, x0, kw0, want_staged=cfg.sequential == "module")
            if cfg.sequential == "module" and not plan.staged:
                raise PruneError(
                    f"layer {li} ({prefix}): --sequential module is not supported for this layer "
                    f"structure: {plan.staged_error}; use --sequential layer"
                )
            if cfg.sequential == "layer":
                self._layer_order(li, layer, plan)
            else:
                self._module_order(li, layer, plan)
        self.store.swap("in", "out")
        self.store.clear("out")
        t0 = time.perf_counter()
        writer.write_layer(li, loader.layer_tensors(layer, prefix))
        self.timer.add("io", t0)
        loader.release_layer(layer)
        state_dir = self.out / STATE_DIR
        _write_json(state_dir / "reports.json", [asdict(r) for r in self.records])
        if cfg.checkpoint_every and ((li + 1) % cfg.checkpoint_every == 0
                                     or li + 1 == len(self.layers)):
            if li + 1 < len(self.layers):
                t0 = time.perf_counter()
                self.store.save_slot("in", state_dir / "acts" / f"L{li + 1}", len(self.seqs))
                self._save_state(li + 1)
                for old in (state_dir / "acts").glob("L*"):
                    if old.name != f"L{li + 1}":
                        shutil.rmtree(old, ignore_errors=True)
                self.timer.add("checkpoint", t0)

    # ---------------------------------------------------------------- passes
    def _check_finite(self, li: int, y: torch.Tensor, i: int, what: str) -> None:
        if not bool(torch.isfinite(y).all()):
            raise ActivationError(
                f"layer {li} ({self.layer_prefix}.{li}): NaN/Inf in {what} for the sequence on "
                f"{self.cfg.calib}:{self.seqs[i].line}; the weights overflow in {self.dtype} "
                "(try --dtype float32 or bfloat16) or the checkpoint is corrupt"
            )

    def _forward_all(self, li: int, layer: nn.Module, slot: str) -> None:
        """``slot[i] = layer(in[i])`` for every sequence."""
        for i in range(len(self.seqs)):
            t0 = time.perf_counter()
            y = layer_output(layer(self.store.get("in", i), **self.layer_kwargs(i)))
            self._check_finite(li, y, i, "the layer output")
            self.store.put(slot, i, y)
            self.timer.add("forward", t0)

    def _accumulators(self, li: int, groups: list[list[str]], mods: dict) -> list:
        if self.cfg.method == "magnitude":
            return [None] * len(groups)
        prefix = f"{self.layer_prefix}.{li}"
        return [HessianAccumulator(
            mods[g[0]].in_features, self.device, hessian=self.cfg.method == "sparsegpt",
            name=f"layer {li} module {prefix}.{group_name(g)}", backend=self.cfg.backend,
        ) for g in groups]

    def _hook(self, acc, on_input=None, stop: bool = False):
        def pre(_m, args):
            x = args[0]
            if acc is not None:
                t0 = time.perf_counter()
                self.timer.sync()
                acc.add(x)
                self.timer.add("hessian", t0)
            if on_input is not None:
                on_input(x)
            if stop:
                raise _Stop
        return pre

    def _prune_group(self, li: int, group: list[str], acc, mods: dict) -> None:
        cfg = self.cfg
        prefix = f"{self.layer_prefix}.{li}"
        t0 = time.perf_counter()
        H = None
        if cfg.method == "sparsegpt":
            try:
                H = acc.hessian()
            except ValueError as exc:
                raise ActivationError(str(exc)) from None
        elif cfg.method == "wanda":
            try:
                acc.col_sq_norms()
            except ValueError as exc:
                raise ActivationError(str(exc)) from None
        # reading the result accumulates the accumulator's last gathered inputs: Hessian time
        t0 = self.timer.add("hessian", t0)
        for name in group:
            t1 = time.perf_counter()
            W = mods[name].weight.data
            try:
                res = prune_weight(W, acc, cfg.method, self.pattern, blocksize=cfg.blocksize,
                                   percdamp=cfg.percdamp, scope=cfg.scope, backend=cfg.backend, H=H)
            except ValueError as exc:
                raise PruneError(f"layer {li}, module {prefix}.{name}: {exc}") from None
            W.copy_(res.weight)
            self.timer.sync()
            self.records.append(ModuleRecord(
                name=f"{prefix}.{name}", layer=li, group=group_name(group),
                shape=[int(W.shape[0]), int(W.shape[1])],
                sparsity=1.0 - float(res.mask.float().mean()), loss=res.loss,
                damping=res.damping, tokens=acc.tokens if acc is not None else 0,
                seconds=time.perf_counter() - t1, backend=res.backend,
            ))
        self.timer.add("obs", t0)

    def _layer_order(self, li: int, layer: nn.Module, plan: LayerPlan) -> None:
        mods = dict(layer.named_modules())
        accs = self._accumulators(li, plan.groups, mods)
        dense_out = self.cfg.propagate == "dense"
        handles = [mods[g[0]].register_forward_pre_hook(self._hook(a))
                   for g, a in zip(plan.groups, accs)]
        bad: list[tuple[int, torch.Tensor]] = []
        try:
            for i in range(len(self.seqs)):
                t0 = time.perf_counter()
                y = layer_output(layer(self.store.get("in", i), **self.layer_kwargs(i)))
                if not bad and not bool(torch.isfinite(y).all()):
                    bad.append((i, y))  # raised after the Hessian checks, which name the module
                if dense_out:
                    self.store.put("out", i, y)
                self.timer.add("forward", t0)
        finally:
            for h in handles:
                h.remove()
        for g, a in zip(plan.groups, accs):
            self._prune_group(li, g, a, mods)
        for i, y in bad:
            self._check_finite(li, y, i, "the dense layer output")
        del accs
        if not dense_out:
            self._forward_all(li, layer, "out")

    def _may_cache(self, structural: bool, in_features: int) -> bool:
        """Keep the last group's inputs (o_proj's, down_proj's) in the store, so the sub-module
        is not run again after that group is pruned? Always for inputs no wider than the hidden
        size (attention: it then runs once per layer); for wider ones (down_proj) only when the
        store is in memory and they fit ``--max-activation-memory`` (else the MLP is recomputed)."""
        if not structural:
            return False
        hidden = int(self.model.config.hidden_size)
        if in_features <= hidden:
            return True
        if self.store.kind == "disk":
            return False
        tokens = sum(s.tokens for s in self.seqs)
        esize = torch.empty((), dtype=self.dtype).element_size()
        extra = tokens * (in_features - hidden) * esize
        return self.store_info["estimate_bytes"] + extra <= parse_bytes(
            self.cfg.max_activation_memory)

    def _module_order(self, li: int, layer: nn.Module, plan: LayerPlan) -> None:
        mods = dict(layer.named_modules())
        attn, mlp = getattr(layer, plan.attn), getattr(layer, plan.mlp)
        norm1, norm2 = getattr(layer, plan.norm1), getattr(layer, plan.norm2)
        if self.cfg.propagate == "dense":
            self._forward_all(li, layer, "out")
        n = len(self.seqs)

        def sub_stage(sub_name: str, sub: nn.Module, norm: nn.Module, call_kwargs: bool) -> None:
            groups = [g for g in plan.groups if g[0].split(".")[0] == sub_name]
            cache = bool(groups) and self._may_cache(plan.cache_last.get(sub_name, False),
                                                     mods[groups[-1][0]].in_features)
            for gi, g in enumerate(groups):
                acc = self._accumulators(li, [g], mods)[0]
                keep = cache and gi == len(groups) - 1
                box: dict = {}
                h = mods[g[0]].register_forward_pre_hook(self._hook(
                    acc, on_input=(lambda x: box.__setitem__("x", x)) if keep else None, stop=True))
                try:
                    for i in range(n):
                        t0 = time.perf_counter()
                        kw = self.layer_kwargs(i) if call_kwargs else {}
                        try:
                            sub(norm(self.store.get("in", i)), **kw)
                        except _Stop:
                            pass
                        if keep:
                            self.store.put("cache", i, box.pop("x"))
                        self.timer.add("forward", t0)
                finally:
                    h.remove()
                self._prune_group(li, g, acc, mods)
            last = mods[groups[-1][0]] if groups and cache else None
            for i in range(n):
                t0 = time.perf_counter()
                x = self.store.get("in", i)
                if last is not None:
                    o = last(self.store.get("cache", i))
                else:
                    kw = self.layer_kwargs(i) if call_kwargs else {}
                    o = layer_output(sub(norm(x), **kw))
                x2 = x + o
                self._check_finite(li, x2, i, f"the output of {sub_name}")
                if sub is attn or self.cfg.propagate == "pruned":
                    self.store.put("in" if sub is attn else "out", i, x2)
                self.timer.add("forward", t0)
            self.store.clear("cache")

        sub_stage(plan.attn, attn, norm1, True)
        sub_stage(plan.mlp, mlp, norm2, False)

    # ---------------------------------------------------------------- report
    def _report(self, start: int) -> dict:
        peak_gpu = (torch.cuda.max_memory_allocated(self.device)
                    if self.device.type == "cuda" else 0)
        return {
            "status": "complete",
            "model": str(self.src),
            "calib": str(self.cfg.calib),
            "out": str(self.out),
            "config": {k: v for k, v in asdict(self.cfg).items()},
            "method": self.cfg.method,
            "pattern": str(self.pattern),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "sequences": len(self.seqs),
            "tokens": sum(s.tokens for s in self.seqs),
            "tokens_note": "Hessians are averaged over tokens, not sequences",
            "layers": len(self.layers),
            "resumed_from_layer": start,
            "modules": [asdict(r) for r in self.records],
            "totals": {
                "wall_s": time.perf_counter() - self.t_start,
                "breakdown_s": dict(self.timer.seconds),
                "peak_cpu_rss_bytes": peak_rss_bytes(),
                "peak_gpu_bytes": int(peak_gpu),
                "activation_store": {**self.store_info, "peak_bytes": self.store.peak_bytes},
                "sparsity": _overall_sparsity(self.records),
            },
        }


def _overall_sparsity(records: list[ModuleRecord]) -> float:
    tot = sum(r.shape[0] * r.shape[1] for r in records)
    return sum(r.sparsity * r.shape[0] * r.shape[1] for r in records) / tot if tot else 0.0


def _to_device(kw: dict, device: torch.device) -> dict:
    def mv(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, tuple):
            return tuple(mv(t) for t in v)
        return v
    return {k: mv(v) for k, v in kw.items()}


def _slice_kwargs(kw: dict, t: int, full: int) -> dict:
    """Keyword arguments for the first ``t`` of ``full`` positions (the probe prefix)."""
    def sl(v):
        if isinstance(v, torch.Tensor):
            for dim, size in enumerate(v.shape):
                if size == full and dim > 0 or (size == full and v.dim() == 1):
                    return v.narrow(dim, 0, t)
            return v
        if isinstance(v, tuple):
            return tuple(sl(x) for x in v)
        return v
    return {k: sl(v) for k, v in kw.items()}


def prune_model(cfg: PruneConfig) -> dict:
    """Prune ``cfg.model`` and write ``cfg.out``; returns the report (also DIR/prune_report.json).

    Raises:
        PruneError / CalibError / ActivationError (ValueError subclasses) or FileNotFoundError for
        bad input, naming the file and line, layer and module, and the fix.
    """
    eng = _Engine(cfg)
    done = eng.setup()
    if done is not None:
        log.info("%s is already complete; nothing to resume", cfg.out)
        return done
    return eng.run()


__all__ = ["PruneConfig", "prune_model", "format_table"]
