"""Streaming per-layer pruning engine: the orchestrator.

``prune_model(PruneConfig(...))`` prunes a Hugging Face causal LM directory one decoder layer at a
time and writes a loadable pruned model directory plus ``prune_report.json`` (README, "Pruning a
model: ``ssgr prune``"). The parts, each in its own module:

* :mod:`~ssgr.prune.config`: :class:`PruneConfig` (every option, its default and help, once) and
  its validation;
* :mod:`~ssgr.prune.state`: the output directory, the resume fingerprint, ``DIR/.ssgr_state/``
  and the activation checkpoints;
* :mod:`~ssgr.prune.loader`: the meta-device skeleton, reading layers from the shards, writing
  the pruned model;
* :mod:`~ssgr.prune.calib`: the calibration set and the model's tokenizer;
* :mod:`~ssgr.prune.capture`: the inputs of the first decoder layer;
* :mod:`~ssgr.prune.orders`: the per-layer interface and the two orders (``layer``, ``module``);
* :mod:`~ssgr.prune.report`: the stage timer, the module records and the report.

The run: (1) the model is a meta-device skeleton; tensors outside the decoder layers are read once
(CPU); (2) capture; (3) for each layer: read its tensors onto the device, probe its structure
(:func:`~ssgr.prune.layers.plan_layer`), prune it in the chosen order, write its shard, checkpoint
the next layer's inputs for ``--resume``, release it; (4) index, ``config.json`` and the report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ssgr.io import claim_files, output_lock, remove_owned
from ssgr.models.checks import ModelDirError, check_model_dir

from . import dist as dist_mod
from . import loader, moe
from .calib import MAX_TOKENS, CalibSequence, load_calibration, model_tokenizer
from .capture import capture, slice_kwargs
from .config import PruneConfig, check_out_writable, resolve_device, validate
from .dist import DistContext, DistError, split_by_tokens
from .errors import (
    MissingFileError,
    ModelError,
    PruneError,
    disk_full_error,
    is_disk_full,
)
from .layers import (
    STAGE_PROBE_TOKENS,
    LayerPlan,
    _matches,
    find_decoder_layers,
    forward_error,
    plan_layer,
    select_targets,
)
from .orders import ORDERS, LayerContext, RunParts
from .pattern import Pattern
from .report import Timer, build_report, format_table
from .state import (
    REPORT,
    STATE_DIR,
    OutPlan,
    RunState,
    fingerprint,
    prepare_out,
    remove_leftovers,
)
from .store import ActivationStore, choose_store, fmt_bytes, parse_bytes

log = logging.getLogger(__name__)

#: Tokens of the first sequence used to probe a layer's structure (:func:`plan_layer`).
PROBE_TOKENS = 32

#: ``on_layer_done(layer_index)``: called after each finished (written, checkpointed) layer.
LayerDone = Callable[[int], None]


@dataclass
class _Setup:
    """Everything read before the first layer (see :func:`_setup`): the source directory, what
    was found at ``--out``, the resume fingerprint and, unless the run is already complete, the
    meta skeleton, its decoder layers, the shard lookup, each layer's targets and the
    calibration sequences."""

    src: Path
    plan: OutPlan
    fp: dict
    dtype: torch.dtype = torch.float32
    model: nn.Module | None = None
    layer_prefix: str = ""
    layers: nn.ModuleList | None = None
    ckpt: loader.SafetensorsCheckpoint | None = None
    targets: list[list[str]] = field(default_factory=list)
    seqs: list[CalibSequence] = field(default_factory=list)
    conv: loader.KeyConversion | None = None


def _setup(cfg: PruneConfig, device: torch.device, writer: bool = True) -> _Setup:
    """Check the inputs and read what the run needs before it writes anything.

    Returns early (``plan.complete``) for ``--resume`` of a finished run. ``writer`` False (a
    torchrun rank other than 0): no fingerprint and no look at ``--out`` (``plan`` is None;
    the engine sends rank 0's).
    """
    src = loader.resolve_model_dir(cfg.model)
    if not Path(cfg.calib).is_file():
        raise MissingFileError(f"--calib {cfg.calib} does not exist")
    try:  # config.json, the shard index and every shard header (cheap), before any work
        check_model_dir(src, need_weights=True)
    except ModelDirError as exc:
        raise ModelError(str(exc)) from None
    if not writer:
        fp, plan = {}, None
    else:
        fp = fingerprint(cfg, src, device)
        plan = prepare_out(cfg, src, fp)
    if plan is not None and plan.complete:
        return _Setup(src, plan, fp)
    config = loader.load_config(src)
    ckpt = loader.SafetensorsCheckpoint(src)
    dtype = loader.resolve_dtype(cfg.dtype, config, ckpt)
    model = loader.build_skeleton(src, dtype, config)
    layer_prefix, layers = find_decoder_layers(model)
    conv = loader.KeyConversion(model, ckpt.keys())
    targets = [_layer_targets(layer, f"{layer_prefix}.{i}", cfg)
               for i, layer in enumerate(layers)]
    if not any(targets):
        lin = [n for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)]
        lin += moe.select_expert_targets(layers[0], f"{layer_prefix}.0", None, None, _matches)
        raise PruneError(
            f"no module matches --targets {cfg.targets or ['<every Linear>']} (minus --ignore "
            f"{cfg.ignore or []}); the Linear modules of a layer are: {', '.join(lin)}"
        )
    conf = model.config
    ctx = getattr(conf, "max_position_embeddings", None) or MAX_TOKENS
    seqs = load_calibration(
        cfg.calib, vocab_size=int(conf.vocab_size), max_tokens=min(int(ctx), MAX_TOKENS),
        tokenize=model_tokenizer(src), max_sequences=cfg.max_sequences,
        calib_tokens=cfg.calib_tokens,
    )
    return _Setup(src, plan, fp, dtype, model, layer_prefix, layers, ckpt, targets, seqs, conv)


def _layer_targets(layer: nn.Module, prefix: str, cfg: PruneConfig) -> list[str]:
    """The layer's targets: its Linear modules (:func:`select_targets`) without MoE routers
    unless ``--targets`` names them (:func:`ssgr.prune.moe.drop_routers`), then its fused MoE
    expert parameters (:func:`ssgr.prune.moe.select_expert_targets`)."""
    lin = select_targets(layer, prefix, cfg.targets, cfg.ignore)
    lin = moe.drop_routers(layer, prefix, lin, cfg.targets, _matches)
    return lin + moe.select_expert_targets(layer, prefix, cfg.targets, cfg.ignore, _matches)


def _open_store(cfg: PruneConfig, s: _Setup, device: torch.device, seqs: list[CalibSequence],
                rank: int | None = None) -> tuple[ActivationStore, dict]:
    """Size the activation store (2 slots of ``tokens x hidden``, 3 for ``module`` order) for
    ``seqs`` (this rank's share under torchrun) and pick where it lives
    (:func:`~ssgr.prune.store.choose_store`; a disk store of torchrun rank ``rank`` has its own
    folder). Returns the store and its report entry."""
    conf = s.model.config
    hidden = int(conf.hidden_size)
    tokens = sum(q.tokens for q in seqs)
    slots = 3 if cfg.sequential == "module" else 2
    esize = torch.empty((), dtype=s.dtype).element_size()
    need = slots * tokens * hidden * esize
    layer_bytes = sum(p.numel() for p in s.layers[0].parameters()) * esize
    reserve = layer_bytes + 4 * 4 * int(getattr(conf, "intermediate_size", hidden)) ** 2
    kind, reason = choose_store(cfg.offload, device, need, parse_bytes(
        cfg.max_activation_memory), reserve)
    folder = "store" if rank is None else f"store.rank{rank}"
    store = ActivationStore(kind, device, s.plan.out / STATE_DIR / folder)
    log.info("activation store: %s (%s)", kind, reason)
    return store, {"kind": kind, "reason": reason, "estimate_bytes": need}


@torch.no_grad()
def _prune_layer(run: RunParts, s: _Setup, li: int, writer: loader.OutputWriter | None) -> None:
    """Load, prune (in ``--sequential`` order), write (unless ``writer`` is None: a torchrun
    rank other than 0) and release layer ``li``; its outputs become slot ``in`` (the next
    layer's inputs)."""
    timer, store = run.timer, run.store
    prefix = f"{s.layer_prefix}.{li}"
    layer = s.layers[li]
    run.kwargs.layer = li
    with timer.stage("io"):
        loader.load_layer(layer, s.ckpt, prefix, run.device, s.dtype, s.conv)
    try:
        _prune_in_order(run, s, li, layer, prefix)
    except Exception as exc:
        err = forward_error(exc, layer, li, prefix)
        if err is None:
            raise
        raise err from exc
    store.swap("in", "out")
    store.clear("out")
    if writer is not None:
        with timer.stage("io"):
            writer.write_layer(li, loader.layer_tensors(layer, prefix))
    loader.release_layer(layer)


def _prune_in_order(run: RunParts, s: _Setup, li: int, layer: nn.Module, prefix: str) -> None:
    """Probe layer ``li``'s structure and prune it in the ``--sequential`` order (its outputs
    go to slot ``out``)."""
    cfg, store = run.cfg, run.store
    targets = s.targets[li]
    order = ORDERS[cfg.sequential]
    if not targets:
        LayerContext(run, li, layer, LayerPlan(groups=[], in_features=[])).forward_all("out")
    else:
        x0 = store.get("in", 0)[:, :PROBE_TOKENS]
        kw0 = slice_kwargs(run.kwargs(0), x0.shape[1], run.seqs[0].tokens)
        plan = plan_layer(layer, targets, x0, kw0)
        order.prune_layer(LayerContext(run, li, layer, plan))


def prune_model(cfg: PruneConfig, *, on_layer_done: LayerDone | None = None) -> dict:
    """Prune ``cfg.model`` and write ``cfg.out``; returns the report (also DIR/prune_report.json).

    Args:
        cfg: the options (:class:`PruneConfig`, the same names as ``ssgr prune``'s flags).
        on_layer_done: called with the layer index after each layer is written and its
            successor's inputs checkpointed (not for layers skipped by ``--resume``); an
            exception it raises stops the run there, resumable.
    Returns:
        the report: ``modules`` (one record per pruned module: sparsity measured on the written
        weight, reconstruction loss, damping, tokens, dead inputs, seconds, backend, and a
        ``flag`` when the sparsity misses the pattern), ``totals`` (``wall_s``, ``breakdown_s``
        in seconds, which sums to at most ``wall_s`` (see :mod:`ssgr.prune.report`), peak memory
        in bytes, the activation store, overall sparsity, ``flagged`` module names) and
        ``fingerprint`` (:func:`~ssgr.prune.state.fingerprint`, checked by ``--resume``).
        Under torchrun (:mod:`ssgr.prune.dist`) also ``distributed``: the world size, backend
        and per rank its sequences, tokens, wall time and breakdown; every rank returns it.
        The whole run holds the lock of ``--out`` (:func:`ssgr.io.output_lock`; rank 0 under
        torchrun).
    Raises:
        PruneError / CalibError / ActivationError (all :class:`~ssgr.errors.SSGRError` and
        ``ValueError``; MissingFileError is also a ``FileNotFoundError``) for bad input, naming
        the file and line, layer and module, and the fix; :class:`ssgr.io.OutputLockedError`
        at once when another run holds ``--out`` (naming its pid); under torchrun
        :class:`~ssgr.prune.dist.DistError` on every rank when another rank failed (with its
        message) or died.
    """
    t_start = time.perf_counter()
    pattern = validate(cfg)
    device = resolve_device(cfg.device)
    d = dist_mod.from_env(cfg.dist_backend, cfg.dist_timeout, device)
    try:
        if d is not None:
            try:
                return _run_dist(cfg, pattern, d, on_layer_done, t_start)
            finally:
                d.close()
        check_out_writable(cfg.out)
        with output_lock(cfg.out, "--out"):
            return _run(cfg, pattern, device, on_layer_done, t_start)
    except PruneError:
        raise
    except Exception as exc:  # a write outside the wrapped writers (ssgr.prune.errors.writing)
        if is_disk_full(exc):
            raise disk_full_error(getattr(exc, "filename", None) or cfg.out) from exc
        raise


def _run_dist(cfg: PruneConfig, pattern: Pattern, d: DistContext,
              on_layer_done: LayerDone | None, t_start: float) -> dict:
    """:func:`_run` under torchrun: rank 0 takes the lock of ``--out`` (every rank learns
    whether it could)."""
    with ExitStack() as stack:
        def take() -> None:
            if d.is_writer:
                check_out_writable(cfg.out)
                stack.enter_context(output_lock(cfg.out, "--out"))
        _guarded(d, "taking the lock of --out", take)
        return _run(cfg, pattern, d.device, on_layer_done, t_start, d)


def _guarded(d: DistContext | None, where: str, fn: Callable, *args):
    """``fn(*args)``; under torchrun followed by an error check (:meth:`DistContext.check`), so a
    failure on one rank stops every rank with its message."""
    if d is None:
        return fn(*args)
    try:
        out = fn(*args)
    except DistError:
        raise
    except BaseException as exc:
        d.check(exc, where)
        raise
    d.check(None, where)
    return out


def _owned_names(s: _Setup) -> list[str]:
    """Everything the run may write in ``--out`` (claimed in its manifest before writing)."""
    return ([loader.REST_SHARD] + [loader.layer_shard_name(i) for i in range(len(s.layers))]
            + [loader.INDEX, "config.json", REPORT, STATE_DIR] + loader.copied_files(s.src))


def _share(s: _Setup, d: DistContext | None
           ) -> tuple[list[CalibSequence], list[CalibSequence], list[int]]:
    """This rank's calibration sequences (:func:`~ssgr.prune.dist.split_by_tokens`; all of them
    without torchrun), as ``(run, counted, index)``: the sequences it runs through the layers,
    the ones its statistics count, and their global numbers (the names of their activation
    checkpoint files). A rank left without a sequence (more ranks than sequences) runs a probe
    instead: the first tokens of the first sequence with no statistics positions, so it takes
    part in every layer's structure probe and collectives and adds nothing (``index`` empty)."""
    if d is None:
        return s.seqs, s.seqs, list(range(len(s.seqs)))
    shares = split_by_tokens([q.tokens for q in s.seqs], d.world)
    log.info("torchrun: sequences per rank %s, tokens per rank %s",
             [len(sh) for sh in shares], [sum(s.seqs[i].tokens for i in sh) for sh in shares])
    mine = [s.seqs[i] for i in shares[d.rank]]
    if mine:
        return mine, mine, shares[d.rank]
    first = s.seqs[0]
    t = min(first.tokens, max(PROBE_TOKENS, STAGE_PROBE_TOKENS))
    probe = CalibSequence(first.input_ids[:, :t], first.line, {"probe": True},
                          torch.empty(0, dtype=torch.int64))
    log.warning("torchrun: %d ranks for %d calibration sequence(s): this rank has none and runs "
                "a %d-token probe that adds no statistics", d.world, len(s.seqs), t)
    return [probe], [], []


def _prepare_state(cfg: PruneConfig, s: _Setup, d: DistContext | None
                   ) -> tuple[RunState, int, list]:
    """Empty or resume the output directory (rank 0 only under torchrun). Returns the run
    state (on every rank: each saves its part of the activation checkpoints), the first layer
    to prune (the checkpoint layer of a resumed run, else 0) and the saved module records
    (rank 0; the engine sends them to the other ranks).

    A resumed run's checkpoint is keyed by global sequence number (:class:`RunState`), so a
    run checkpointed by another number of ranks (or one process) resumes with the sequences
    re-split for this one (a WARNING names both sizes)."""
    rank, world = (0, 1) if d is None else (d.rank, d.world)
    state = RunState(s.plan.out, s.fp, len(s.layers), len(s.seqs), rank, world)
    start = int(s.plan.state["ckpt_layer"]) if s.plan.state is not None else 0
    if rank != 0:
        return state, start, []
    out = s.plan.out
    if s.plan.remove:
        log.warning("--overwrite: removing the files ssgr wrote in %s", out)
        remove_owned(out)
    claim_files(out, _owned_names(s))
    remove_leftovers(out, finished=False)
    if s.plan.state is None:
        state.start()
        return state, 0, []
    saved_world = int(s.plan.state.get("world_size", 1))
    log.info("resuming %s at layer %d (its inputs from the checkpoint of %d rank(s))", out,
             start, saved_world)
    if saved_world != world:
        log.warning("--resume: %s was checkpointed by %d rank(s) and resumes on %d: the "
                    "sequences are re-split for %d (the checkpoint is kept per sequence); the "
                    "weights equal either run's to fp32 rounding", out, saved_world, world, world)
    state.drop_others(keep=start)  # checkpoints a kill left unrecorded
    return state, start, state.load_records(start)


def _checkpoint(state: RunState, store: ActivationStore, layer: int, index: list[int],
                d: DistContext | None) -> None:
    """Checkpoint the inputs of ``layer`` (slot ``in``). Under torchrun every rank saves its
    part, an error check makes sure all did, then rank 0 records the checkpoint (followed by
    another error check, so a failed record stops every rank)."""
    if d is None:
        state.checkpoint(store, "in", layer)
        return
    _guarded(d, f"saving the checkpoint of layer {layer}", state.save_part, store, "in", layer,
             index)
    _guarded(d, f"recording the checkpoint of layer {layer}",
             lambda: d.is_writer and state.commit(layer))


def _run(cfg: PruneConfig, pattern: Pattern, device: torch.device, on_layer_done: LayerDone | None,
         t_start: float, d: DistContext | None = None) -> dict:
    """:func:`prune_model` under the run lock of ``--out``; ``d``: under torchrun."""
    writes = d is None or d.is_writer
    s = _guarded(d, "reading the model and the calibration set", _setup, cfg, device, writes)
    if d is not None:
        s.plan = d.broadcast_object(s.plan)
    out = s.plan.out
    if s.plan.complete:
        if writes:
            remove_leftovers(out, finished=True)
        log.info("%s is already complete; nothing to resume", cfg.out)
        return json.loads((out / REPORT).read_text())
    seqs, counted, index = _guarded(d, "splitting the calibration set", _share, s, d)
    state, start, records = _guarded(d, "preparing --out", _prepare_state, cfg, s, d)
    if d is not None and start > 0:  # rank 0's saved records of the finished layers
        records = d.broadcast_object(records)
    timer = Timer(device)

    def before_first_layer():
        store, store_info = _open_store(cfg, s, device, seqs, None if d is None else d.rank)
        writer = loader.OutputWriter(s.src, out, s.dtype, s.conv) if writes else None
        with timer.stage("io"):
            rest = loader.load_outside_layers(s.model, s.ckpt, s.layer_prefix, s.dtype, s.conv)
            if writer is not None:
                writer.write_rest(rest)
            del rest
        with timer.stage("capture"):
            kwargs = capture(s.model, s.layers[0], seqs, store, device, s.dtype,
                             keep_hidden=start == 0, progress=writes)
        if start > 0:
            with timer.stage("io"):
                state.restore(store, "in", start, index, [q.tokens for q in seqs])
        return store, store_info, writer, kwargs

    store, store_info, writer, kwargs = _guarded(d, "capturing the first layer's inputs",
                                                 before_first_layer)
    run = RunParts(
        cfg=cfg, pattern=pattern, device=device, dtype=s.dtype, seqs=seqs, store=store,
        kwargs=kwargs, timer=timer, layer_prefix=s.layer_prefix,
        hidden_size=int(s.model.config.hidden_size), store_estimate=store_info["estimate_bytes"],
        records=records, dist=d,
    )
    n_layers = len(s.layers)
    bar = tqdm(range(start, n_layers), desc=f"{cfg.method} {pattern}", unit="layer",
               initial=start, total=n_layers, disable=not writes)
    for li in bar:
        _prune_layer_checked(run, s, li, writer)
        if writes:
            state.save_records(run.records)
        if state.due(li, cfg.checkpoint_every):
            with timer.stage("checkpoint"):
                _checkpoint(state, store, li + 1, index, d)
        bar.set_postfix(store=fmt_bytes(store.peak_bytes))
        if on_layer_done is not None:
            on_layer_done(li)
    bar.close()

    if writer is not None:
        with timer.stage("io"):
            _guarded(d, "writing the index", writer.finish, n_layers)
    elif d is not None:
        d.check(None, "writing the index")
    wall = time.perf_counter() - t_start
    ranks = None
    if d is not None:
        with timer.stage("allreduce"):
            ranks = d.gather_objects({
                "rank": d.rank, "device": str(device), "sequences": len(counted),
                "tokens": sum(q.tokens for q in counted),
                "statistics_tokens": sum(q.stat_tokens for q in counted),
                "wall_s": wall, "breakdown_s": dict(timer.seconds),
            })
    report = build_report(
        cfg=cfg, src=s.src, out=out, pattern=pattern, device=device, dtype=s.dtype, seqs=s.seqs,
        layers=n_layers, start=start, records=run.records,
        wall_s=time.perf_counter() - t_start, timer=timer, store_info=store_info,
        store_peak_bytes=store.peak_bytes,
    )
    if d is not None:
        report["distributed"] = {"world_size": d.world, "backend": d.backend, "ranks": ranks}
    report["fingerprint"] = s.fp
    flagged = report["totals"]["flagged"]
    if flagged:
        log.warning("%d module(s) deviate from the %s pattern (flagged in the report): %s",
                    len(flagged), pattern, ", ".join(flagged[:8]))
    store.close()
    if writes:
        state.finish(report)
    return report


def _prune_layer_checked(run: RunParts, s: _Setup, li: int,
                         writer: loader.OutputWriter | None) -> None:
    """:func:`_prune_layer`; under torchrun followed by the layer-end error check (timed as
    ``allreduce``)."""
    d = run.dist
    if d is None:
        _prune_layer(run, s, li, writer)
        return
    try:
        _prune_layer(run, s, li, writer)
    except DistError:
        raise
    except BaseException as exc:
        with run.timer.stage("allreduce"):
            d.check(exc, f"in layer {li}")
        raise
    with run.timer.stage("allreduce"):
        d.check(None, f"in layer {li}")


__all__ = ["PruneConfig", "prune_model", "format_table", "REPORT", "STATE_DIR", "LayerDone"]
