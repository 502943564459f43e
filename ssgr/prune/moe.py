"""Mixture-of-Experts layers: each expert's projections pruned as its own matrices.

transformers 5 builds the experts of Qwen2-MoE, Qwen3-MoE, Mixtral (and the families that share
their code) as one module holding 3-D parameters, ``gate_up_proj[E, 2I, H]`` and
``down_proj[E, H, I]``, run by an experts loop that forward hooks cannot look inside::

    for e in experts hit:                       # transformers' eager experts forward
        tok = tokens whose top-k choice includes e
        gate, up = linear(x[tok], gate_up_proj[e]).chunk(2, -1)
        y[tok] += linear(act(gate) * up, down_proj[e]) * routing weight

ssgr gets each expert's inputs with its own mirror of that loop, run from a forward pre-hook on
the experts module (which receives the router's choice): expert ``e``'s ``gate_proj`` /
``up_proj`` (rows ``[:I]`` / ``[I:]`` of ``gate_up_proj[e]``) share one Hessian, from the hidden
states of the tokens routed to ``e``; its ``down_proj`` Hessian is from its intermediate
activations ``act(gate) * up`` of those tokens, computed with the current (in ``module`` order,
already pruned) gate/up weights. The mirror is checked against the module's own output on each
layer's probe (:func:`check_mirror`), so an experts class that computes differently is refused
instead of mis-calibrated. The router (``mlp.gate``) and a shared expert's scalar gate
(``shared_expert_gate``: a Linear that is a direct child of the MoE block) are never pruned
unless ``--targets`` names them; a shared expert (``shared_expert``) is an ordinary MLP of
Linears. Expert biases (``gate_up_proj_bias`` / ``down_proj_bias``) are kept as they are.

``--moe-calibration all`` feeds every statistics token to every expert's statistics (the layer's
output still follows the router), as llm-compressor's ``moe_calibrate_all_experts``.
Sources: the experts loop of transformers' ``Qwen3MoeExperts`` / ``MixtralExperts``;
SparseGPT (Frantar & Alistarh, 2023) and Wanda (Sun et al., 2023) per matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ssgr.ops import HessianAccumulator

from .errors import PruneError

#: The 3-D expert parameters, their per-expert matrices (rows of gate_up: gate then up) and the
#: checkpoint-style names of those matrices.
GATE_UP, DOWN = "gate_up_proj", "down_proj"
MOE_CALIBRATION = ("routed", "all")


def find_experts(layer: nn.Module) -> list[str]:
    """Names (relative to ``layer``) of its fused experts modules: modules with 3-D
    ``gate_up_proj[E, 2I, H]`` and ``down_proj[E, H, I]`` parameters."""
    out = []
    for n, m in layer.named_modules():
        gu, dn = getattr(m, GATE_UP, None), getattr(m, DOWN, None)
        if isinstance(gu, nn.Parameter) and isinstance(dn, nn.Parameter) \
                and gu.dim() == 3 and dn.dim() == 3:
            out.append(n)
    return out


def expert_param(name: str) -> tuple[str, str] | None:
    """``"mlp.experts.gate_up_proj"`` -> ``("mlp.experts", "gate_up_proj")``; None for a name
    that is not an expert target."""
    parent, _, leaf = name.rpartition(".")
    return (parent, leaf) if leaf in (GATE_UP, DOWN) and parent else None


def is_expert_group(group: list[str], mods: dict[str, nn.Module]) -> bool:
    """Whether a Hessian group is a fused expert parameter (not a module)."""
    return len(group) == 1 and group[0] not in mods and expert_param(group[0]) is not None


def _aliases(pname: str) -> tuple[str, ...]:
    return ("gate_proj", "up_proj") if pname == GATE_UP else ("down_proj",)


def select_expert_targets(layer: nn.Module, prefix: str, targets: list[str] | None,
                          ignore: list[str] | None,
                          matches: Callable[[str, str, str], bool]) -> list[str]:
    """The fused expert parameters to prune (``"mlp.experts.gate_up_proj"``, ...).

    ``targets`` None selects every expert projection; a pattern selects it when it matches
    (``matches(pattern, full, in_layer)``, the syntax of ``--targets``) the parameter
    (``gate_up_proj``), a per-expert matrix name (``gate_proj``, ``up_proj``, ``down_proj``), the
    experts module or a container of it (``mlp``), or a class name on that path. ``ignore``
    removes them the same way.
    """
    mods = dict(layer.named_modules())
    out = []
    for ename in find_experts(layer):
        parts = ename.split(".")
        containers = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        classes = {type(mods[c]).__name__ for c in containers}
        for pname in (GATE_UP, DOWN):
            names = [f"{ename}.{pname}"] + [f"{ename}.{a}" for a in _aliases(pname)] + containers

            def hit(p: str, names=names, classes=classes) -> bool:
                return p in classes or any(matches(p, f"{prefix}.{n}", n) for n in names)

            chosen = targets is None or any(hit(p) for p in targets)
            if chosen and not any(hit(p) for p in ignore or []):
                out.append(f"{ename}.{pname}")
    return out


def routers(layer: nn.Module) -> list[str]:
    """Linear modules that gate an MoE block (e.g. Qwen2-MoE's ``mlp.shared_expert_gate``): the
    direct ``nn.Linear`` children of a module that holds a fused experts module."""
    out = []
    for ename in find_experts(layer):
        block = ename.rpartition(".")[0]
        parent = layer.get_submodule(block) if block else layer
        for c, m in parent.named_children():
            if isinstance(m, nn.Linear):
                out.append(f"{block}.{c}" if block else c)
    return out


def drop_routers(layer: nn.Module, prefix: str, names: list[str], targets: list[str] | None,
                 matches: Callable[[str, str, str], bool]) -> list[str]:
    """``names`` without the MoE routers (:func:`routers`), unless a ``--targets`` pattern
    names the router itself (its full, in-layer or leaf name), not only a container."""
    gates = set(routers(layer))
    keep = {g for g in gates for p in targets or []
            if p.rpartition(".")[2] == g.rpartition(".")[2] or
            (("." in p or p.startswith("re:")) and matches(p, f"{prefix}.{g}", g))}
    return [n for n in names if n not in gates or n in keep]


@dataclass
class ExpertStats:
    """One accumulator per expert for one fused parameter (its input statistics).

    accs: ``accs[e]`` for expert ``e``; None for magnitude (no statistics).
    """

    accs: list[HessianAccumulator | None] | None
    num_experts: int

    @property
    def tokens(self) -> int:
        """Tokens summed over experts (routed token-expert pairs)."""
        return sum(a.tokens for a in self.accs or [] if a is not None)


def new_stats(experts: nn.Module, pname: str, device: torch.device, method: str,
              name: str, backend: str | None) -> ExpertStats:
    """Fresh per-expert accumulators for ``experts.<pname>`` (``[E, rows, cols]``)."""
    p = getattr(experts, pname)
    E, cols = int(p.shape[0]), int(p.shape[2])
    if method == "magnitude":
        return ExpertStats(None, E)
    accs = [HessianAccumulator(cols, device, hessian=method == "sparsegpt",
                               name=f"{name}.{e}", backend=backend) for e in range(E)]
    return ExpertStats(accs, E)


def _bias(experts: nn.Module, pname: str, e: int) -> torch.Tensor | None:
    b = getattr(experts, f"{pname}_bias", None)
    return b[e] if isinstance(b, torch.Tensor) else None


def expert_intermediate(experts: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """``act(gate) * up`` of expert ``e`` for its tokens ``x[t, H]``: ``[t, I]`` (the input of
    its down projection), as transformers' eager experts loop computes it."""
    gate, up = F.linear(x, experts.gate_up_proj[e], _bias(experts, GATE_UP, e)).chunk(2, dim=-1)
    return experts.act_fn(gate) * up


def routed(top_k_index: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top-k slot [n], token row [n])`` of the tokens whose top-k choice ``top_k_index[T, k]``
    includes expert ``e``, in the eager loop's order (``torch.where`` over the ``[k, T]`` expert
    mask: slot-major), so the statistics rows come in the order transformers computes them."""
    return torch.where((top_k_index == e).transpose(0, 1))


@torch.no_grad()
def mirror_forward(experts: nn.Module, x: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor) -> torch.Tensor:
    """ssgr's mirror of transformers' eager experts loop: ``y[T, H]`` from ``x[T, H]``, the
    router's ``top_k_index[T, k]`` and ``top_k_weights[T, k]``."""
    y = torch.zeros_like(x)
    for e in range(int(experts.gate_up_proj.shape[0])):
        pos, tok = routed(top_k_index, e)
        if not tok.numel():
            continue
        h = expert_intermediate(experts, e, x[tok])
        o = F.linear(h, experts.down_proj[e], _bias(experts, DOWN, e))
        y.index_add_(0, tok, (o * top_k_weights[tok, pos, None]).to(y.dtype))
    return y


def experts_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden_states[T, H], top_k_index[T, k], top_k_weights[T, k])`` of an experts call."""
    vals = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index", "top_k_weights")
                         if k in kwargs]
    if len(vals) < 3:
        raise PruneError("an experts module was called without (hidden_states, top_k_index, "
                         "top_k_weights); this MoE family is not supported")
    return vals[0], vals[1], vals[2]


@torch.no_grad()
def check_mirror(experts: nn.Module, name: str, args: tuple, kwargs: dict,
                 out: torch.Tensor) -> None:
    """Refuse an experts module whose output ``out`` (from ``args`` / ``kwargs`` of a probe
    call) differs from :func:`mirror_forward`: its per-expert statistics would be wrong.

    Raises:
        PruneError naming the module and the fix (``--ignore`` it).
    """
    x, idx, w = experts_args(args, kwargs)
    p = experts.gate_up_proj
    ok = p.shape[2] == x.shape[-1] and experts.down_proj.shape[1] == x.shape[-1] \
        and p.shape[1] == 2 * experts.down_proj.shape[2] and hasattr(experts, "act_fn")
    if ok:
        y = mirror_forward(experts, x, idx, w)
        ref = out[0] if isinstance(out, (tuple, list)) else out
        tol = 1e-3 * float(ref.abs().max()) + 1e-5
        ok = y.shape == ref.shape and bool(torch.allclose(y.float(), ref.float(), atol=tol,
                                                          rtol=1e-3))
    if not ok:
        raise PruneError(
            f"{name} ({type(experts).__name__}): its forward differs from transformers' eager "
            "experts loop (gate_up_proj[E, 2I, H] -> act(gate) * up -> down_proj[E, H, I]) that "
            "ssgr mirrors to take each expert's statistics; this MoE family is not supported: "
            f"leave its experts dense with --ignore {name.rpartition('.')[2] or name}"
        )


def feed(stats: ExpertStats, experts: nn.Module, pname: str, x: torch.Tensor,
         top_k_index: torch.Tensor, select: torch.Tensor | None, calibration: str) -> None:
    """Add the statistics tokens of one experts call to each expert's accumulator.

    Args:
        x: the experts' input ``[T, H]`` (one sequence); top_k_index: ``[T, k]``;
        select: row indices of the statistics positions (None: all rows);
        calibration: ``routed`` (each expert's routed tokens) or ``all`` (every token, every
            expert).
    """
    if stats.accs is None:
        return
    if select is not None:
        x, top_k_index = x.index_select(0, select), top_k_index.index_select(0, select)
    for e, acc in enumerate(stats.accs):
        xe = x if calibration == "all" else x.index_select(0, routed(top_k_index, e)[1])
        if not xe.shape[0]:
            continue
        acc.add(xe if pname == GATE_UP else expert_intermediate(experts, e, xe))


def expert_matrices(experts: nn.Module, pname: str, e: int) -> list[tuple[str, torch.Tensor]]:
    """Expert ``e``'s matrices of ``experts.<pname>`` as ``(name, view [rows, cols])``:
    ``gate_proj`` and ``up_proj`` (the two row halves of ``gate_up_proj[e]``, pruned as separate
    matrices with one Hessian) or ``down_proj``. Views: writing them writes the parameter."""
    W = getattr(experts, pname).data[e]
    if pname == GATE_UP:
        half = W.shape[0] // 2
        return [("gate_proj", W[:half]), ("up_proj", W[half:])]
    return [("down_proj", W)]


__all__ = ["MOE_CALIBRATION", "ExpertStats", "check_mirror", "drop_routers", "expert_matrices",
           "expert_param", "feed", "find_experts", "is_expert_group", "mirror_forward",
           "new_stats", "routers", "select_expert_targets"]
