"""Generic model walking: decoder layers, target modules, Hessian groups and stages.

No per-family code: the decoder layers are the longest ``nn.ModuleList`` of the model; targets are
the ``nn.Linear`` modules inside a layer (filtered by ``--targets`` / ``--ignore``); modules that
receive the *same input tensor* share one Hessian (q/k/v, gate/up), found by running a short probe
through the layer with pre-hooks; groups are ordered by when they first run. For
``--sequential module`` the layer is decomposed into
``x -> norm1 -> attn -> +x -> norm2 -> mlp -> +``
(Llama, Mistral, Qwen2, Qwen3 and most decoder-only families); that decomposition is checked
numerically against the layer's own forward on the probe before it is used.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from . import moe
from .errors import LayerError, PruneError


class _Stop(Exception):
    """Raised inside a hook to stop a forward pass once the wanted input is captured."""


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the decoder layers: the model's longest ModuleList."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise PruneError(
            f"no decoder layers found in {type(model).__name__}: it has no non-empty "
            "nn.ModuleList (expected e.g. model.layers); is num_hidden_layers 0, or is this not a "
            "decoder-only causal LM?"
        )
    return max(lists, key=lambda nm: len(nm[1]))


class Conv1DLinear(nn.Linear):
    """An ``nn.Linear`` standing in for a transformers ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``,
    ``c_fc``, ``mlp.c_proj``): ``Conv1D`` computes ``x @ W + b`` with ``W[in, out]``; this module
    holds ``W.T[out, in]`` as its weight and computes the same map, so the engine prunes it as a
    linear map (rows = outputs, columns = the inputs the Hessian ``X^T X`` is taken over). Its
    ``state_dict`` and ``load_state_dict`` use the checkpoint's ``[in, out]`` layout, so the
    shards it reads and writes are GPT-2's own."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_load_state_dict_pre_hook(Conv1DLinear._load_transposed)
        self.register_state_dict_post_hook(Conv1DLinear._save_transposed)

    @staticmethod
    def _load_transposed(module, state_dict, prefix, *_args) -> None:
        w = state_dict.get(prefix + "weight")
        if w is not None and tuple(w.shape) == (module.in_features, module.out_features):
            state_dict[prefix + "weight"] = w.t().contiguous()

    @staticmethod
    def _save_transposed(_module, state_dict, prefix, _local_metadata) -> None:
        key = prefix + "weight"
        if key in state_dict:
            state_dict[key] = state_dict[key].t().contiguous()


def linearise_conv1d(layer: nn.Module) -> list[str]:
    """Replace every transformers ``Conv1D`` inside ``layer`` by a :class:`Conv1DLinear` of the
    same map (on the same device and dtype; weights are not copied: call it on a meta skeleton
    before loading). Returns the replaced names."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # a transformers without Conv1D has no such layers
        return []
    done = []
    for name, m in list(layer.named_modules()):
        if not isinstance(m, Conv1D):
            continue
        nx, nf = m.weight.shape
        new = Conv1DLinear(nx, nf, bias=m.bias is not None, device=m.weight.device,
                           dtype=m.weight.dtype)
        parent, _, leaf = name.rpartition(".")
        setattr(layer.get_submodule(parent) if parent else layer, leaf, new)
        done.append(name)
    return done


def _matches(pattern: str, full: str, local: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], full) is not None
    leaf = local.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(s, pattern) for s in (full, local, leaf))


def select_targets(
    layer: nn.Module, prefix: str, targets: list[str] | None, ignore: list[str] | None
) -> list[str]:
    """Names (relative to the layer) of the modules to prune, in registration order.

    ``targets``: None selects every ``nn.Linear``; else each pattern is a class name (``Linear``),
    a glob matched against the full name (``model.layers.0.mlp.up_proj``), the in-layer name
    (``mlp.up_proj``) or the leaf (``up_proj``), or ``re:REGEX`` searched in the full name. A
    matched container (``mlp``) selects the Linears inside it. A pattern that matches only modules
    of another type (e.g. ``input_layernorm``) is an error: ssgr prunes ``nn.Linear`` only.
    ``ignore`` removes modules (or containers) the same way.
    """
    named = [(n, m) for n, m in layer.named_modules() if n]

    def hits(pattern: str, n: str, m: nn.Module) -> bool:
        return type(m).__name__ == pattern or _matches(pattern, f"{prefix}.{n}", n)

    def expand(pattern: str) -> tuple[set[str], list[tuple[str, nn.Module]]]:
        lin, other = set(), []
        for n, m in named:
            if not hits(pattern, n, m):
                continue
            if isinstance(m, nn.Linear):
                lin.add(n)
                continue
            inner = {f"{n}.{c}" for c, cm in m.named_modules() if isinstance(cm, nn.Linear)}
            if inner:
                lin |= inner
            else:
                other.append((n, m))
        return lin, other

    if targets is None:
        chosen = {n for n, m in named if isinstance(m, nn.Linear)}
    else:
        chosen = set()
        for p in targets:
            lin, other = expand(p)
            if not lin and other:
                n, m = other[0]
                raise PruneError(
                    f"--targets {p!r} matches module {prefix}.{n}, a {type(m).__name__}, which "
                    "ssgr cannot prune (unsupported module type: only nn.Linear is pruned); "
                    "target Linear modules such as q_proj or mlp"
                )
            chosen |= lin
    for p in ignore or []:
        chosen -= expand(p)[0]
    return [n for n, _ in named if n in chosen]


def group_name(group: list[str]) -> str:
    """``["self_attn.q_proj", "self_attn.k_proj"]`` -> ``"self_attn.q_proj+k_proj"``."""
    parent = group[0].rpartition(".")[0]
    if all(n.rpartition(".")[0] == parent for n in group):
        return (parent + "." if parent else "") + "+".join(n.rpartition(".")[2] for n in group)
    return "+".join(group)


def layer_output(out) -> torch.Tensor:
    """A decoder layer's hidden states (layers return a tensor or a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class LayerPlan:
    """Hessian groups of a layer in call order.

    groups: module names (relative to the layer) sharing one input, in call order;
    in_features: that input's width per group (the accumulator's size).
    """

    groups: list[list[str]]
    in_features: list[int]


def _in_features(mods: dict[str, nn.Module], name: str) -> int:
    """Input width of a target: a Linear's ``in_features``, a fused expert parameter's last
    dimension (``gate_up_proj[E, 2I, H]``: H; ``down_proj[E, H, I]``: I)."""
    if name in mods:
        return int(mods[name].in_features)
    ename, pname = moe.expert_param(name)
    return int(getattr(mods[ename], pname).shape[2])


def _owner(name: str, children: list[str]) -> str | None:
    for c in children:
        if name == c or name.startswith(c + "."):
            return c
    return None


@torch.no_grad()
def plan_layer(
    layer: nn.Module, targets: list[str], x: torch.Tensor, kwargs: dict
) -> LayerPlan:
    """Probe the layer with ``x[1, t, d]`` (a short prefix of a calibration sequence).

    Groups: targets whose first call received the identical input tensor; a fused MoE expert
    parameter (``mlp.experts.gate_up_proj``, see :mod:`ssgr.prune.moe`) is a group of its own,
    placed where its experts module is called, and that module's output is checked against
    ssgr's mirror of the experts loop (PruneError when it differs). ``--sequential module``
    derives its own decomposition (:func:`stage_layer`).
    """
    mods = dict(layer.named_modules())
    first_input: dict[str, object] = {}
    order: list[str] = []
    handles = []
    lin = [n for n in targets if n in mods]
    # fused MoE expert parameters ("mlp.experts.gate_up_proj"): one group each, at the call of
    # their experts module, whose output is checked against ssgr's mirror (ssgr.prune.moe)
    by_experts: dict[str, list[str]] = {}
    for n in targets:
        if n not in mods and (ep := moe.expert_param(n)) is not None and ep[0] in mods:
            by_experts.setdefault(ep[0], []).append(n)
    for n in lin:
        def pre(_m, args, kw, n=n):
            if n not in first_input:
                first_input[n] = args[0] if args else next(iter(kw.values()))
                order.append(n)
        handles.append(mods[n].register_forward_pre_hook(pre, with_kwargs=True))
    for ename, names in by_experts.items():
        def epre(_m, args, kw, names=names):
            for n in names:
                if n not in first_input:
                    first_input[n] = object()  # never shared with another group
                    order.append(n)

        def epost(m, args, kw, o, ename=ename):
            moe.check_mirror(m, ename, args, kw, o)
        handles.append(mods[ename].register_forward_pre_hook(epre, with_kwargs=True))
        handles.append(mods[ename].register_forward_hook(epost, with_kwargs=True))
    try:
        layer(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in targets if n not in first_input]
    if missing:
        raise PruneError(f"modules {missing} were never called by the layer's forward; add them "
                         "to --ignore")
    groups: list[list[str]] = []
    for n in order:
        for g in groups:
            if first_input[g[0]] is first_input[n]:
                g.append(n)
                break
        else:
            groups.append([n])
    return LayerPlan(groups=groups, in_features=[_in_features(mods, g[0]) for g in groups])


#: Tokens of the first sequence that probe a layer's decomposition (:func:`stage_layer`).
STAGE_PROBE_TOKENS = 32


@dataclass
class Stages:
    """A decoder layer as two residual sub-layers, for ``--sequential module``::

        x2 = x + post1(attn(pre1(x), **kwargs));  y = x2 + post2(mlp(pre2(x2)))

    attn / mlp: the child names holding the Linear modules; pre1, post1, pre2, post2: the
    parameter-free or normalisation children applied around them, in call order (Llama:
    ``pre1 = [input_layernorm]``, ``pre2 = [post_attention_layernorm]``; Gemma2/3 add
    ``post1 = [post_attention_layernorm]``, ``post2 = [post_feedforward_layernorm]``; OLMo2 has
    only post-norms; Phi-3's ``resid_*_dropout`` are post1 / post2 and identities in eval mode).
    cache_last: per sub-layer, whether the output of its last Hessian group's module *is* the
    sub-layer's output (so that module's cached input may stand in for re-running it).
    """

    attn: str
    mlp: str
    pre1: list[str]
    post1: list[str]
    pre2: list[str]
    post2: list[str]
    cache_last: dict[str, bool] = field(default_factory=dict)

    def chain(self, layer: nn.Module, names: list[str], x: torch.Tensor) -> torch.Tensor:
        """``x`` through the children ``names`` in order."""
        for n in names:
            x = layer_output(getattr(layer, n)(x))
        return x


class StageError(PruneError):
    """A layer that is not two residual sub-layers (see :class:`Stages`); the message says why."""


@torch.no_grad()
def stage_layer(layer: nn.Module, groups: list[list[str]], x: torch.Tensor,
                kwargs: dict) -> Stages:
    """Derive the :class:`Stages` of ``layer`` from a probe ``x[1, t, d]`` (with the layer's
    keyword arguments for ``t`` tokens) and check them numerically against ``layer(x)``.

    Children are recorded in call order with their input and output tensors: the two children
    that hold Linear modules are attention then MLP; a child between them whose input is the
    attention's output (or the previous such child's) is a post-norm, else a pre-norm of the
    MLP; likewise after the MLP. Dropout children are identities (eval mode).

    Raises:
        StageError naming the layer class, the call order and the reason when the layer does
        not have this form or its forward differs from the decomposition (tolerance
        ``1e-3 * max|y| + 1e-5``, relative ``1e-3``).
    """
    cls = type(layer).__name__
    order: list[str] = []
    c_in: dict[str, object] = {}
    c_out: dict[str, object] = {}
    g_out: dict[str, object] = {}
    mods = dict(layer.named_modules())
    handles = []
    for cname, child in layer.named_children():
        def pre(_m, args, kw, c=cname):
            if c not in c_in:
                order.append(c)
                c_in[c] = args[0] if args else kw.get("hidden_states",
                                                       next(iter(kw.values()), None))
        handles.append(child.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(child.register_forward_hook(
            lambda _m, _a, o, c=cname: c_out.setdefault(c, o)))
    for g in groups:
        if g[-1] in mods:  # MoE expert targets are slices of a fused parameter, not modules
            handles.append(mods[g[-1]].register_forward_hook(
                lambda _m, _a, o, n=g[-1]: g_out.setdefault(n, o)))
    try:
        ref = layer_output(layer(x, **kwargs))
    finally:
        for h in handles:
            h.remove()
    def holds(c: str) -> bool:  # Linear modules, or targets (fused MoE experts hold no Linear)
        return (any(isinstance(m, nn.Linear) for m in getattr(layer, c).modules())
                or any(g[0].startswith(c + ".") for g in groups))

    subs = [c for c in order if holds(c)]
    what = f"{cls} (children in call order: {order})"
    if len(subs) != 2:
        raise StageError(f"{what} does not have exactly two children holding Linear modules "
                         f"(attention, MLP): {subs}")
    attn, mlp = subs
    for g in groups:
        if not any(g[0] == c or g[0].startswith(c + ".") for c in subs):
            raise StageError(f"{what}: module {g[0]} is outside the attention and the MLP")
    for c in order:
        if c in subs:
            continue
        if any(isinstance(m, nn.Linear) for m in getattr(layer, c).modules()):
            raise StageError(f"{what}: child {c} holds Linear modules")
    ia, im = order.index(attn), order.index(mlp)
    pre1, post1, pre2, post2 = order[:ia], [], [], []
    last = layer_output(c_out[attn])
    for c in order[ia + 1:im]:
        if c_in[c] is last and not pre2:
            post1.append(c)
            last = layer_output(c_out[c])
        else:
            pre2.append(c)
    last = layer_output(c_out[mlp])
    for c in order[im + 1:]:
        if c_in[c] is not last:
            raise StageError(f"{what}: child {c} after the MLP does not take the MLP's output")
        post2.append(c)
        last = layer_output(c_out[c])
    st = Stages(attn, mlp, pre1, post1, pre2, post2)
    h = st.chain(layer, post1, layer_output(getattr(layer, attn)(st.chain(layer, pre1, x),
                                                                   **kwargs)))
    x2 = x + h
    y = x2 + st.chain(layer, post2, layer_output(getattr(layer, mlp)(st.chain(layer, pre2, x2))))
    if bool(torch.isfinite(ref).all()):  # NaN/Inf is reported later, naming the module
        tol = 1e-3 * float(ref.abs().max()) + 1e-5
        if not torch.allclose(y.float(), ref.float(), atol=tol, rtol=1e-3):
            err = float((y.float() - ref.float()).abs().max())
            raise StageError(
                f"{what}'s forward differs from x + post1(attn(pre1(x))) -> + post2(mlp(pre2("
                f"x2))) with pre1={pre1}, post1={post1}, pre2={pre2}, post2={post2} (max "
                f"difference {err:.3g})")
    for sub in (attn, mlp):
        own = [g for g in groups if g[0].startswith(sub + ".")]
        st.cache_last[sub] = bool(own and len(own[-1]) == 1 and g_out.get(own[-1][0])
                                  is layer_output(c_out[sub]))
    return st


def forward_error(exc: BaseException, layer: nn.Module, li: int, prefix: str) -> LayerError | None:
    """The :class:`~ssgr.prune.errors.LayerError` for ``exc`` when it was raised inside a
    module of decoder layer ``li`` (``prefix``, e.g. ``model.layers.3``), else None.

    The module is the deepest one of the layer whose method is on ``exc``'s traceback (its
    ``forward`` or a hook it ran), named in full (``model.layers.3.self_attn.q_proj``); the
    caller raises the result ``from exc``. ssgr's own errors and the internal stop signal of
    :func:`plan_layer` are never wrapped.
    """
    if isinstance(exc, (PruneError, _Stop)) or not isinstance(exc, Exception):
        return None
    names = {id(m): n for n, m in layer.named_modules()}
    found: str | None = None
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if obj is not None and id(obj) in names:
            found = names[id(obj)]
        tb = tb.tb_next
    if found is None:
        return None
    where = prefix + (f".{found}" if found else "")
    return LayerError(
        f"layer {li} ({prefix}): {type(exc).__name__} in the forward of module {where}: {exc}; "
        "the checkpoint does not match this model family's code, or the transformers version "
        "does not support it (run with -v for the traceback)")
