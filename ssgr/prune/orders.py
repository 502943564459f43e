"""The two layer orders (``--sequential layer`` / ``module``) over one per-layer interface.

:class:`LayerContext` is everything an order needs to prune one decoder layer: run every
sequence through the layer (or a part of it) from the activation store, hook a module's input
into a :class:`~ssgr.ops.HessianAccumulator`, prune a Hessian group, check activations for
NaN/Inf. An order (:class:`LayerOrder`, :class:`ModuleOrder`) decides only *when* each group's
statistics are taken and how the next layer's inputs are produced; both leave the next layer's
inputs in store slot ``"out"``.

* ``layer``: every Hessian of the layer from one dense pass, then one pass through the pruned
  layer (llm-compressor's order).
* ``module``: q/k/v, then o, then gate/up, then down, each Hessian taken after the earlier groups
  are pruned; the last group's input of a sub-module (o_proj's, and down_proj's when it fits the
  memory budget) is kept in store slot ``"cache"``, so attention runs once per layer.

``--propagate dense`` feeds the next layer the dense layer's outputs instead of the pruned one's.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ssgr.ops import HessianAccumulator

from . import moe
from .calib import CalibSequence
from .capture import LayerKwargs, slice_kwargs
from .config import PruneConfig
from .dist import DistContext
from .errors import ActivationError, PruneError
from .layers import (
    STAGE_PROBE_TOKENS,
    LayerPlan,
    StageError,
    Stages,
    _Stop,
    group_name,
    layer_output,
    stage_layer,
)
from .methods import prune_weight
from .pattern import Pattern
from .report import ModuleRecord, Timer, deviation
from .store import ActivationStore, parse_bytes

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    """The run-wide pieces every layer uses (built once by the engine).

    store_estimate: the activation store's size estimate in bytes (``2`` or ``3`` slots of
    ``tokens x hidden``), used to decide whether down_proj's wider input may be cached.
    """

    cfg: PruneConfig
    pattern: Pattern
    device: torch.device
    dtype: torch.dtype
    seqs: list[CalibSequence]
    store: ActivationStore
    kwargs: LayerKwargs
    timer: Timer
    layer_prefix: str
    hidden_size: int
    store_estimate: int
    records: list[ModuleRecord] = field(default_factory=list)
    #: Under torchrun: this rank's place in the process group (``seqs`` are then this rank's
    #: share only, and the statistics are summed over ranks before pruning).
    dist: DistContext | None = None


class LayerContext:
    """The per-layer interface of the orders: layer ``li`` (its weights on the device) and the
    run's parts. Activations ``x[1, t, d]`` in the run's dtype live in store slots ``in``
    (this layer's inputs), ``out`` (the next layer's) and ``cache``."""

    def __init__(self, run: RunParts, li: int, layer: nn.Module, plan: LayerPlan) -> None:
        self.run = run
        self.li = li
        self.layer = layer
        self.plan = plan
        self.prefix = f"{run.layer_prefix}.{li}"
        self.mods = dict(layer.named_modules())
        #: The sequence now running through the layer (set by the orders' hooked passes): its
        #: statistics positions select what the hooks feed to the accumulators.
        self.cur = 0
        self._sel: dict[int, torch.Tensor] = {}

    def stat_input(self, x: torch.Tensor) -> torch.Tensor:
        """The part of a module input ``x[1, t, d]`` of sequence :attr:`cur` that feeds the
        statistics: the positions its calibration line selects
        (:attr:`~ssgr.prune.calib.CalibSequence.stat_positions`, e.g. ``attention_mask`` ones),
        all of ``x`` when it selects every position. Per-token selection lives here, so any
        rule that picks positions (a mask, prompt vs response) is applied the same way."""
        sel = self._stat_rows(x)
        return x if sel is None else x.index_select(1, sel)

    @property
    def n(self) -> int:
        """Number of calibration sequences."""
        return len(self.run.seqs)

    def check_finite(self, y: torch.Tensor, i: int, what: str) -> None:
        """Raises ActivationError (naming the layer and the sequence's calibration line) when
        ``y`` holds NaN/Inf."""
        if not bool(torch.isfinite(y).all()):
            run = self.run
            raise ActivationError(
                f"layer {self.li} ({self.prefix}): NaN/Inf in {what} for the sequence on "
                f"{run.cfg.calib}:{run.seqs[i].line}; the weights overflow in {run.dtype} "
                "(try --dtype float32 or bfloat16) or the checkpoint is corrupt"
            )

    def forward_all(self, slot: str) -> None:
        """``slot[i] = layer(in[i])`` for every sequence (one "forward" stage)."""
        run = self.run
        with run.timer.stage("forward"):
            for i in range(self.n):
                y = layer_output(self.layer(run.store.get("in", i), **run.kwargs(i)))
                self.check_finite(y, i, "the layer output")
                run.store.put(slot, i, y)

    def accumulator(self, gi: int) -> HessianAccumulator | moe.ExpertStats | None:
        """A fresh accumulator for Hessian group ``plan.groups[gi]`` (None for magnitude); for
        a fused MoE expert parameter, one per expert (:class:`~ssgr.prune.moe.ExpertStats`)."""
        cfg = self.run.cfg
        g = self.plan.groups[gi]
        name = f"layer {self.li} module {self.prefix}.{group_name(g)}"
        if moe.is_expert_group(g, self.mods):
            ename, pname = moe.expert_param(g[0])
            return moe.new_stats(self.mods[ename], pname, self.run.device, cfg.method,
                                 f"layer {self.li} module {self.prefix}.{ename}.{pname}",
                                 cfg.backend)
        if cfg.method == "magnitude":
            return None
        return HessianAccumulator(
            self.plan.in_features[gi], self.run.device, hessian=cfg.method == "sparsegpt",
            name=name, backend=cfg.backend,
        )

    def _stat_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """Indices of the statistics positions of sequence :attr:`cur` (None: every position),
        on ``x``'s device: rows of a flattened ``x[t, d]`` (an experts module's input) or
        dimension 1 of ``x[1, t, d]`` (:meth:`stat_input`)."""
        pos = self.run.seqs[self.cur].stat_positions
        if pos is None:
            return None
        sel = self._sel.get(self.cur)
        if sel is None or sel.device != x.device:
            sel = self._sel[self.cur] = pos.to(x.device)
        return sel

    def hook(self, gi: int, acc: HessianAccumulator | moe.ExpertStats | None,
             on_input: Callable[[torch.Tensor], None] | None = None, stop: bool = False):
        """Register a forward pre-hook on group ``gi``'s first module: it feeds the module's
        input to ``acc`` (timed as "hessian" inside the enclosing pass), hands it to
        ``on_input``, and with ``stop`` ends the pass there. Returns the hook handle.

        For a fused MoE expert parameter the hook sits on its experts module and feeds each
        expert's routed inputs (``--moe-calibration all``: every token) to its accumulator
        (:func:`ssgr.prune.moe.feed`); ``on_input`` does not apply to it (its input is not one
        tensor)."""
        timer = self.run.timer
        group = self.plan.groups[gi]
        if moe.is_expert_group(group, self.mods):
            ename, pname = moe.expert_param(group[0])
            experts = self.mods[ename]
            calibration = self.run.cfg.moe_calibration

            def epre(_m, args, kw):
                x, idx, _w = moe.experts_args(args, kw)
                if acc is not None:
                    with timer.stage("hessian"):
                        moe.feed(acc, experts, pname, x, idx, self._stat_rows(x), calibration)
                if stop:
                    raise _Stop

            return experts.register_forward_pre_hook(epre, with_kwargs=True)

        def pre(_m, args):
            x = args[0]
            if acc is not None:
                with timer.stage("hessian"):
                    acc.add(self.stat_input(x))
            if on_input is not None:
                on_input(x)
            if stop:
                raise _Stop

        return self.mods[group[0]].register_forward_pre_hook(pre)

    def _stats(self, acc: HessianAccumulator | None, d: int
               ) -> tuple[torch.Tensor | None, int | None, str | None]:
        """``(H, dead inputs, fallback reason)`` of one accumulator under the ``--min-tokens``
        policy: fewer than ``--min-tokens`` statistics tokens, or every input exactly zero on
        every token, gives a reason (the module is then pruned by magnitude); H is the
        token-averaged Hessian for SparseGPT (None otherwise).

        Raises:
            ActivationError when the accumulator saw no tokens and the policy is off
            (``--min-tokens 0``), or non-finite inputs.
        """
        cfg = self.run.cfg
        if cfg.method == "magnitude" or acc is None:
            return None, None, None
        tokens = acc.tokens
        if cfg.min_tokens > 0 and tokens < cfg.min_tokens:
            return None, None, (f"{tokens} calibration token(s) reached it, fewer than "
                                f"--min-tokens {cfg.min_tokens}")
        H = None
        try:
            if cfg.method == "sparsegpt":
                H = acc.hessian()
                diag = H.diagonal()
            else:
                diag = acc.col_sq_norms()
        except ValueError as exc:
            raise ActivationError(str(exc)) from None
        dead = int((diag == 0).sum())
        if cfg.min_tokens > 0 and dead == d:
            return H, dead, (f"all {d} of its inputs were exactly zero on its {tokens} "
                             "calibration token(s) (dead inputs)")
        return H, dead, None

    def _prune_matrix(self, name: str, group: str, W: torch.Tensor,
                      acc: HessianAccumulator | None, H: torch.Tensor | None, dead: int | None,
                      fallback: str | None) -> ModuleRecord:
        """Prune ``W[r, c]`` in place (the method, or magnitude when ``fallback`` says why) and
        return its :class:`ModuleRecord`; ``name`` is relative to the layer."""
        run, cfg = self.run, self.run.cfg
        full = f"{self.prefix}.{name}"
        t1 = time.perf_counter()
        method = cfg.method if fallback is None else "magnitude"
        if fallback is not None:
            log.warning("layer %d, module %s: %s; pruned by magnitude at %s instead of %s "
                        "(--min-tokens policy)", self.li, full, fallback, run.pattern,
                        cfg.method)
        try:
            res = prune_weight(W, acc if fallback is None else None, method, run.pattern,
                               blocksize=cfg.blocksize, percdamp=cfg.percdamp, scope=cfg.scope,
                               backend=cfg.backend, H=H if fallback is None else None)
        except ValueError as exc:
            raise PruneError(f"layer {self.li}, module {full}: {exc}") from None
        W.copy_(res.weight)
        # measured on the weight as it is written (the run's dtype), not on the mask
        zero = float((W == 0).sum()) / W.numel()
        flag = deviation(zero, run.pattern.fraction, int(W.shape[1]), dead)
        if flag:
            log.warning("layer %d, module %s: %s", self.li, full, flag)
        run.timer.sync()
        return ModuleRecord(
            name=full, layer=self.li, group=group,
            shape=[int(W.shape[0]), int(W.shape[1])],
            sparsity=zero, loss=res.loss,
            damping=res.damping, tokens=acc.tokens if acc is not None else 0,
            seconds=time.perf_counter() - t1, backend=res.backend,
            flag=flag, dead_inputs=dead, method=method, fallback=fallback,
        )

    def prune_group(self, gi: int, acc: HessianAccumulator | moe.ExpertStats | None) -> None:
        """Prune every module of group ``gi`` with the group's statistics; appends one
        :class:`ModuleRecord` per module (per expert matrix for a fused MoE parameter) to the
        run's records. A module under the ``--min-tokens`` policy (too few tokens, or only
        zero inputs) is pruned by magnitude at the run's pattern, with one WARNING line naming
        it and its token count, and its record says so (``method``, ``fallback``).

        Raises:
            ActivationError when the accumulator saw no tokens (``--min-tokens 0``) or
            non-finite inputs; PruneError naming the module when its pruning step rejects the
            input.

        Under torchrun the matrices are spread over the ranks (:func:`assign_work`), each
        rank prunes its share, and the pruned weights and records are sent to every rank, so
        every rank goes on with the same pruned layer and rank 0 holds every record.
        """
        run = self.run
        group = self.plan.groups[gi]
        d = self.plan.in_features[gi]
        self._reduce(gi, acc)
        # the work items: (name, record group label, W, accumulator, expert index or None)
        items: list[tuple[str, str, torch.Tensor, HessianAccumulator | None, int | None]] = []
        if moe.is_expert_group(group, self.mods):
            ename, pname = moe.expert_param(group[0])
            experts = self.mods[ename]
            for e in range(acc.num_experts):
                a = acc.accs[e] if acc.accs is not None else None
                mats = moe.expert_matrices(experts, pname, e)
                label = f"{ename}.{e}." + "+".join(n for n, _ in mats)
                items += [(f"{ename}.{e}.{mname}", label, W, a, e) for mname, W in mats]
        else:
            items = [(name, group_name(group), self.mods[name].weight.data, acc, None)
                     for name in group]
        dist = run.dist
        owners = ([0] * len(items) if dist is None else
                  assign_work([_obs_cost(it[2]) for it in items], dist.world))
        mine = 0 if dist is None else dist.rank
        recs: dict[int, ModuleRecord] = {}
        stats: tuple | None = None
        err: BaseException | None = None
        try:
            for k, (name, label, W, a, e) in enumerate(items):
                if owners[k] == mine:
                    if stats is None:
                        # reading the result accumulates the last gathered inputs: Hessian time
                        with run.timer.stage("hessian"):
                            stats = self._stats(a, d)
                    with run.timer.stage("obs"):
                        recs[k] = self._prune_matrix(name, label, W, a, *stats)
                last_of_acc = k + 1 == len(items) or items[k + 1][3] is not a
                if last_of_acc:
                    stats = None
                    if e is not None and acc.accs is not None:
                        acc.accs[e] = None  # free expert e's statistics
        except Exception as exc:
            if dist is None:
                raise
            err = exc
        if dist is not None:
            self._share_results(items, owners, recs, err)
        run.records.extend(recs[k] for k in range(len(items)))

    def _share_results(self, items: list, owners: list[int], recs: dict[int, ModuleRecord],
                       err: BaseException | None) -> None:
        """Under torchrun, after each rank pruned its share of a group: an error check (a
        rank's failure stops every rank with its message), then each pruned weight broadcast
        from its owner and the records gathered, so ``recs`` holds every item's record."""
        run, dist = self.run, self.run.dist
        where = f"pruning layer {self.li} ({self.prefix})"
        with run.timer.stage("allreduce"):
            dist.check(err, where)
        with run.timer.stage("broadcast"):
            for k, it in enumerate(items):
                dist.broadcast_(it[2], owners[k], f"{self.prefix}.{it[0]}")
            for part in dist.gather_objects(recs):
                recs.update(part)

    def _reduce(self, gi: int, acc: HessianAccumulator | moe.ExpertStats | None) -> None:
        """Under torchrun: an error check, then group ``gi``'s statistics summed over ranks
        (:meth:`~ssgr.prune.dist.DistContext.reduce_stats`; per expert for a fused MoE
        parameter, in expert order). Every rank calls it for the same groups in the same order."""
        dist = self.run.dist
        if dist is None:
            return
        name = f"layer {self.li} {self.prefix}.{group_name(self.plan.groups[gi])}"
        with self.run.timer.stage("allreduce"):
            dist.check(where=f"before the statistics of {name}")
            accs = acc.accs if isinstance(acc, moe.ExpertStats) else [acc]
            for e, a in enumerate(accs or []):
                dist.reduce_stats(a, name if len(accs) == 1 else f"{name} expert {e}")

    def may_cache(self, structural: bool, in_features: int) -> bool:
        """Keep the last group's inputs (o_proj's, down_proj's) in the store, so the sub-module
        is not run again after that group is pruned? Always for inputs no wider than the hidden
        size (attention: it then runs once per layer); for wider ones (down_proj) only when the
        store is in memory and they fit ``--max-activation-memory`` (else the MLP is recomputed)."""
        run = self.run
        if not structural:
            return False
        if in_features <= run.hidden_size:
            return True
        if run.store.kind == "disk":
            return False
        tokens = sum(s.tokens for s in run.seqs)
        esize = torch.empty((), dtype=run.dtype).element_size()
        extra = tokens * (in_features - run.hidden_size) * esize
        return run.store_estimate + extra <= parse_bytes(run.cfg.max_activation_memory)


def _obs_cost(W: torch.Tensor) -> int:
    """Estimated cost of pruning ``W[rows, cols]``: ``cols^3`` (the Hessian's Cholesky
    inverse) + ``rows x cols^2`` (the OBS updates), as in SparseGPT's complexity analysis
    (Frantar & Alistarh 2023, section 3)."""
    rows, cols = int(W.shape[0]), int(W.shape[1])
    return cols ** 3 + rows * cols ** 2


def assign_work(costs: list[int], world: int) -> list[int]:
    """The owner rank of each work item: largest cost first (ties: lower index), each to the
    rank with the least assigned cost so far (ties: lower rank). Deterministic."""
    load = [0] * world
    owner = [0] * len(costs)
    for k in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world), key=lambda q: (load[q], q))
        owner[k] = r
        load[r] += costs[k]
    return owner


class Order(Protocol):
    """A layer order: prunes ``ctx.layer``'s target groups and leaves the next layer's inputs in
    store slot ``"out"``."""

    #: ``--sequential`` value.
    name: str

    def prune_layer(self, ctx: LayerContext) -> None: ...


class LayerOrder:
    """``--sequential layer``: one dense pass for every Hessian, then a pass through the pruned
    layer (or, with ``--propagate dense``, the dense pass's outputs go on)."""

    name = "layer"

    def prune_layer(self, ctx: LayerContext) -> None:
        run, plan = ctx.run, ctx.plan
        dense_out = run.cfg.propagate == "dense"
        accs = [ctx.accumulator(gi) for gi in range(len(plan.groups))]
        handles = [ctx.hook(gi, a) for gi, a in enumerate(accs)]
        bad: list[tuple[int, torch.Tensor]] = []
        try:
            with run.timer.stage("forward"):
                for i in range(ctx.n):
                    ctx.cur = i
                    y = layer_output(ctx.layer(run.store.get("in", i), **run.kwargs(i)))
                    if not bad and not bool(torch.isfinite(y).all()):
                        bad.append((i, y))  # raised after the Hessian checks: they name the module
                    if dense_out:
                        run.store.put("out", i, y)
        finally:
            for h in handles:
                h.remove()
        for gi, a in enumerate(accs):
            ctx.prune_group(gi, a)
        for i, y in bad:
            ctx.check_finite(y, i, "the dense layer output")
        del accs
        if not dense_out:
            ctx.forward_all("out")


class ModuleOrder:
    """``--sequential module``: per sub-layer (attention, then MLP) and per Hessian group, a pass
    that stops at the group's first module, then the group is pruned; a last pass through the
    pruned sub-layer adds its residual (from the cached input of its last group when allowed).

    The layer is split by :func:`~ssgr.prune.layers.stage_layer` (pre-norms, post-norms and
    dropouts around attention and MLP, checked numerically on a probe of the first sequence);
    a layer it cannot split is refused with the reason (:class:`ModuleOrderError`), never run
    in another order silently.
    """

    name = "module"

    def prune_layer(self, ctx: LayerContext) -> None:
        run, plan, layer = ctx.run, ctx.plan, ctx.layer
        t = min(STAGE_PROBE_TOKENS, run.seqs[0].tokens)
        x0 = run.store.get("in", 0)[:, :t]
        kw0 = slice_kwargs(run.kwargs(0), t, run.seqs[0].tokens)
        try:
            st = stage_layer(layer, plan.groups, x0, kw0)
        except StageError as exc:
            raise ModuleOrderError(
                f"layer {ctx.li} ({ctx.prefix}): --sequential module cannot split this layer: "
                f"{exc}; use --sequential layer") from None
        if run.cfg.propagate == "dense":
            ctx.forward_all("out")
        self._sub_stage(ctx, st, st.attn, st.pre1, st.post1, call_kwargs=True)
        self._sub_stage(ctx, st, st.mlp, st.pre2, st.post2, call_kwargs=False)

    @staticmethod
    def _sub_stage(ctx: LayerContext, st: Stages, sub_name: str, pre: list[str],
                   post: list[str], call_kwargs: bool) -> None:
        run, plan, layer = ctx.run, ctx.plan, ctx.layer
        sub = getattr(layer, sub_name)
        is_attn = sub_name == st.attn
        store, timer = run.store, run.timer
        gis = [gi for gi, g in enumerate(plan.groups) if g[0].split(".")[0] == sub_name]
        cache = bool(gis) and ctx.may_cache(st.cache_last.get(sub_name, False),
                                            plan.in_features[gis[-1]])
        for k, gi in enumerate(gis):
            acc = ctx.accumulator(gi)
            keep = cache and k == len(gis) - 1
            box: dict = {}
            h = ctx.hook(gi, acc, on_input=functools.partial(box.__setitem__, "x") if keep
                         else None, stop=True)
            try:
                with timer.stage("forward"):
                    for i in range(ctx.n):
                        ctx.cur = i
                        kw = run.kwargs(i) if call_kwargs else {}
                        try:
                            sub(st.chain(layer, pre, store.get("in", i)), **kw)
                        except _Stop:
                            pass
                        if keep:
                            store.put("cache", i, box.pop("x"))
            finally:
                h.remove()
            ctx.prune_group(gi, acc)
        last = ctx.mods[plan.groups[gis[-1]][0]] if gis and cache else None
        with timer.stage("forward"):
            for i in range(ctx.n):
                x = store.get("in", i)
                if last is not None:
                    o = last(store.get("cache", i))
                else:
                    kw = run.kwargs(i) if call_kwargs else {}
                    o = layer_output(sub(st.chain(layer, pre, x), **kw))
                x2 = x + st.chain(layer, post, o)
                ctx.check_finite(x2, i, f"the output of {sub_name}")
                if is_attn or run.cfg.propagate == "pruned":
                    store.put("in" if is_attn else "out", i, x2)
        store.clear("cache")


class ModuleOrderError(PruneError):
    """``--sequential module`` on a layer that is not two residual sub-layers; names the layer,
    its class, its children and the fix (``--sequential layer``)."""


#: ``--sequential`` value -> order.
ORDERS: dict[str, Order] = {"layer": LayerOrder(), "module": ModuleOrder()}
