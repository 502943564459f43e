"""Layer shapes of real models and the run settings shared by the ``bench_*.py`` files.

Each :class:`Model` gives its ``nn.Linear`` weight shapes (``rows = out_features``,
``cols = in_features``) for q/k/v/o/gate/up/down and its distinct Hessian widths (the inputs of
q/k/v/gate/up have width ``hidden``, the input of down has width ``intermediate``; o_proj's input
has width ``heads * head_dim = hidden`` for all models here).

The sets actually benchmarked depend on the device: ``CPU_*`` fit ``make bench`` on a 2-core
machine (SmolLM2-135M and Qwen2.5-1.5B; for SparseGPT only 1.5B's attention, plus the two shapes
of the
speed goal), ``GPU_*`` are the 1.5B/7B/14B shapes. ``SSGR_BENCH_SMOKE=1`` (or
``pytest --bench-smoke``) swaps in tiny shapes and one round: a seconds-long check that every
benchmark still runs (CI).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

SMOKE: bool = os.environ.get("SSGR_BENCH_SMOKE", "").strip() not in ("", "0")
DEVICE: str = "cuda" if torch.cuda.is_available() else "cpu"

MODULES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Layer:
    """One weight shape ``[rows, cols]`` of ``model``, shared by ``modules`` (e.g. q and o).

    ``model == ""`` marks a shape that is not tied to a model (its label is just ``RxC``)."""

    model: str
    modules: tuple[str, ...]
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def label(self) -> str:
        """``"smollm2-135m q/o 576x576"`` (``"4096x4096"`` for a model-less shape)."""
        parts = [self.model, "/".join(self.modules), f"{self.rows}x{self.cols}"]
        return " ".join(p for p in parts if p)

    @property
    def id(self) -> str:
        """pytest id: the label without spaces."""
        return self.label.replace(" ", "-")


@dataclass(frozen=True)
class Width:
    """One Hessian width ``d`` of ``model`` (``role``: ``"hidden"`` or ``"intermediate"``)."""

    model: str
    role: str
    d: int

    @property
    def label(self) -> str:
        """``"smollm2-135m d=1536"``."""
        return f"{self.model} d={self.d}"

    @property
    def id(self) -> str:
        return f"{self.model}-d{self.d}"


@dataclass(frozen=True)
class Model:
    """A decoder's linear-layer geometry: ``q_out == hidden`` (heads * head_dim), ``kv_out`` =
    kv_heads * head_dim."""

    name: str
    hidden: int
    intermediate: int
    kv_out: int

    @property
    def linears(self) -> dict[str, tuple[int, int]]:
        """``{module: (rows, cols)}`` of the weights, rows = out features, cols = in features."""
        h, i, kv = self.hidden, self.intermediate, self.kv_out
        return {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h),
                "gate": (i, h), "up": (i, h), "down": (h, i)}

    @property
    def hessian_widths(self) -> tuple[Width, ...]:
        """The distinct Hessian widths: ``hidden`` (q/k/v, o, gate/up) and ``intermediate``."""
        return (Width(self.name, "hidden", self.hidden),
                Width(self.name, "intermediate", self.intermediate))

    def layers(self, modules: tuple[str, ...] = MODULES) -> list[Layer]:
        """The distinct weight shapes among ``modules``, each naming the modules that share it."""
        by_shape: dict[tuple[int, int], list[str]] = {}
        for name in modules:
            by_shape.setdefault(self.linears[name], []).append(name)
        return [Layer(self.name, tuple(names), r, c) for (r, c), names in by_shape.items()]


# heads / kv heads x head_dim: SmolLM2-135M 9 / 3 x 64, Qwen2.5-1.5B 12 / 2 x 128,
# Qwen2.5-7B 28 / 4 x 128, DeepSeek-R1-Distill-Qwen-14B (Qwen2.5-14B) 40 / 8 x 128.
SMOLLM2_135M = Model("smollm2-135m", hidden=576, intermediate=1536, kv_out=192)
QWEN25_1_5B = Model("qwen2.5-1.5b", hidden=1536, intermediate=8960, kv_out=256)
QWEN25_7B = Model("qwen2.5-7b", hidden=3584, intermediate=18944, kv_out=512)
R1_QWEN_14B = Model("r1-distill-qwen-14b", hidden=5120, intermediate=13824, kv_out=1024)
MODELS: tuple[Model, ...] = (SMOLLM2_135M, QWEN25_1_5B, QWEN25_7B, R1_QWEN_14B)
TINY = Model("tiny", hidden=128, intermediate=256, kv_out=64)  # smoke mode only

ATTENTION: tuple[str, ...] = ("q", "k", "v", "o")


def layer_of(model: Model, module: str) -> Layer:
    """The distinct shape of ``model`` that ``module`` has (naming all modules sharing it)."""
    return next(lay for lay in model.layers() if module in lay.modules)


def distinct_widths(models: tuple[Model, ...]) -> list[Width]:
    """Hessian widths of ``models`` in order, each width once (named after its first model)."""
    seen: set[int] = set()
    out = []
    for model in models:
        for w in model.hessian_widths:
            if w.d not in seen:
                seen.add(w.d)
                out.append(w)
    return out


# The foundation issue's speed-goal shapes: Llama-7B-like q_proj and a 2048x5632 down_proj. Their
# group names ("sparsegpt 4096x4096 50% cpu", ...) and problems must not change.
SPARSEGPT_GOAL_LAYERS: list[Layer] = [Layer("", (), 4096, 4096), Layer("", (), 2048, 5632)]

# CPU (make bench, 2 cores): all of SmolLM2-135M; Qwen2.5-1.5B attention for SparseGPT (its MLP
# shapes cost llm-compressor 3-15 s a call), all of Qwen2.5-1.5B for the masks and Hessian widths.
CPU_LAYERS: list[Layer] = SMOLLM2_135M.layers() + QWEN25_1_5B.layers(ATTENTION)
CPU_SPARSEGPT_LAYERS: list[Layer] = SPARSEGPT_GOAL_LAYERS + CPU_LAYERS
CPU_MASK_LAYERS: list[Layer] = SMOLLM2_135M.layers() + QWEN25_1_5B.layers()
CPU_WANDA_LAYER: Layer = layer_of(QWEN25_1_5B, "gate")
CPU_HESSIAN_WIDTHS: list[Width] = distinct_widths((SMOLLM2_135M, QWEN25_1_5B))  # 576 1536 8960
CPU_HESSIAN_TOKENS = 2048
# above this many weights (or d * d * tokens Hessian flops) a CPU group gets fewer rounds
CPU_BIG_NUMEL = 8 << 20
CPU_BIG_FLOPS = 1e11

# GPU (benchmarks on CUDA): 1.5B, 7B and 14B.
GPU_LAYERS: list[Layer] = [lay for m in (QWEN25_1_5B, QWEN25_7B, R1_QWEN_14B) for lay in m.layers()]
GPU_SPARSEGPT_LAYERS: list[Layer] = (
    SPARSEGPT_GOAL_LAYERS + QWEN25_7B.layers() + R1_QWEN_14B.layers()
)
GPU_MASK_LAYERS: list[Layer] = GPU_LAYERS
GPU_WANDA_LAYER: Layer = layer_of(R1_QWEN_14B, "gate")
GPU_HESSIAN_WIDTHS: list[Width] = distinct_widths((QWEN25_7B, R1_QWEN_14B))
GPU_HESSIAN_TOKENS = 32768

# Smoke: tiny shapes (cols multiples of 128 so 2:4 and OBS blocks fit), one round.
SMOKE_LAYERS: list[Layer] = [Layer("", (), 256, 256)] + TINY.layers()
SMOKE_HESSIAN_TOKENS = 64

_GPU = DEVICE == "cuda"
# the speed goal measured again with the peer's and ssgr's rounds alternating (bench_sparsegpt.py)
PAIRED_LAYERS: list[Layer] = SMOKE_LAYERS[:1] if SMOKE else SPARSEGPT_GOAL_LAYERS
if SMOKE:
    SPARSEGPT_LAYERS, MASK_LAYERS = SMOKE_LAYERS, TINY.layers()
    WANDA_LAYER = layer_of(TINY, "gate")
    HESSIAN_WIDTHS, HESSIAN_TOKENS = list(TINY.hessian_widths), SMOKE_HESSIAN_TOKENS
else:
    SPARSEGPT_LAYERS = GPU_SPARSEGPT_LAYERS if _GPU else CPU_SPARSEGPT_LAYERS
    MASK_LAYERS = GPU_MASK_LAYERS if _GPU else CPU_MASK_LAYERS
    WANDA_LAYER = GPU_WANDA_LAYER if _GPU else CPU_WANDA_LAYER
    HESSIAN_WIDTHS = GPU_HESSIAN_WIDTHS if _GPU else CPU_HESSIAN_WIDTHS
    HESSIAN_TOKENS = GPU_HESSIAN_TOKENS if _GPU else CPU_HESSIAN_TOKENS
HESSIAN_DTYPE: torch.dtype = torch.bfloat16 if _GPU else torch.float32


def rounds(default: int, *, big: bool = False, big_default: int = 3) -> int:
    """Timed rounds: 1 in smoke mode, else ``SSGR_BENCH_ROUNDS`` or ``default`` (``big_default``
    for a ``big`` problem on the CPU, where one call takes seconds)."""
    if SMOKE:
        return 1
    if big and not _GPU:
        default = min(default, big_default)
    return int(os.environ.get("SSGR_BENCH_ROUNDS", str(default)))


def budget_rounds(seconds_per_call: float, *, min_rounds: int = 5, budget_s: float = 15.0,
                  max_rounds: int = 30) -> int:
    """Timed rounds that span about ``budget_s`` (pytest-benchmark's max-time idea), at least
    ``min_rounds`` and at most ``max_rounds``: a fast implementation's median then comes from the
    same stretch of wall time as a slow peer's, so a burst of load on a shared machine is no more
    likely to move one than the other. 1 in smoke mode; ``SSGR_BENCH_ROUNDS`` overrides."""
    if SMOKE:
        return 1
    if "SSGR_BENCH_ROUNDS" in os.environ:
        return int(os.environ["SSGR_BENCH_ROUNDS"])
    want = math.ceil(budget_s / max(seconds_per_call, 1e-9))
    return max(min_rounds, min(max_rounds, want))


def warmup(default: int = 1) -> int:
    """Untimed warm-up rounds: none in smoke mode."""
    return 0 if SMOKE else default


def backends(op: str) -> list[str]:
    """ssgr backends of ``op`` available here that run on :data:`DEVICE` tensors: reference and
    cpu on a CPU machine; reference, triton and cuda on a GPU machine (the cpu backend is measured
    in the CPU run)."""
    from ssgr.ops import support_matrix

    on_device = ("reference", "triton", "cuda") if _GPU else ("reference", "cpu")
    row = support_matrix()[op]
    return [b for b in on_device if row.get(b, "unknown") is None]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
            torch.float64: "fp64"}[dtype]
