"""``make gpu``'s benchmark run: ssgr's GPU backends at Qwen-14B layer shapes side by side with
the torch baselines and llm-compressor, ratios taken in one run, JSON written to
``benchmarks/results/gpu-<device>.json`` (the device is named inside too).

Measured here, all with CUDA events (median of several runs after a warm-up):

* peaks: bf16 GEMM TFLOP/s (``torch.mm`` 8192^3) and device-to-device copy bandwidth (1 GiB);
* Hessian: ``X[32768, 5120]`` (and 13824) bf16, ``H.addmm_(X.T.float(), X.float())`` vs the
  triton / cuda backends; TFLOP/s counting ``d^2 * tokens`` FLOPs, against the GEMM peak
  (goal: >= 1.5x the baseline at d=5120);
* SparseGPT: W 5120x5120, 13824x5120, 5120x13824 at 2:4 and 50%, llm-compressor's
  ``sparsify_weight`` on the GPU vs the backends, with mask mismatches and max difference
  against it (goal: >= 10x at 5120x13824 with identical results);
* masks: 2:4 keep mask bandwidth (4 B read + 1 B written per score) against the copy bandwidth
  (goal: >= 70%), and per-row 50% top-k time.

Run: ``python benchmarks/gpu.py [--quick]`` on a machine with a CUDA device and ssgr installed
with its CUDA extension (``make gpu`` does both).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("ssgr.bench.gpu")
HERE = Path(__file__).resolve().parent
TOKENS = 32768
SPARSEGPT_SHAPES = [(5120, 5120), (13824, 5120), (5120, 13824)]
PATTERNS = {"2:4": dict(n=2, m=4), "50%": dict(sparsity=0.5)}


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``reps`` runs (CUDA events, after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return statistics.median(out)


def peaks(quick: bool) -> dict:
    n = 4096 if quick else 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), reps=10, warmup=3)
    gemm = 2 * n**3 / t / 1e12
    del a, b, c
    nbytes = (256 if quick else 1024) << 20
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda dst=dst, src=src: dst.copy_(src), reps=20, warmup=3)
    copy = 2 * nbytes / t / 1e9
    log.info("peaks: bf16 GEMM %.0f TFLOP/s, D2D copy %.0f GB/s", gemm, copy)
    return {"bf16_gemm_tflops": gemm, "d2d_copy_gbps": copy}


def available(op: str) -> list[str]:
    from ssgr.ops import support_matrix

    m = support_matrix()[op]
    for b in ("triton", "cuda"):
        if m[b] is not None:
            log.warning("%s %s unavailable: %s", op, b, m[b])
    return [b for b in ("triton", "cuda") if m[b] is None]


def bench_hessian(pk: dict, quick: bool) -> list[dict]:
    from ssgr.ops import hessian_accumulate

    rows = []
    for d in [5120] if quick else [5120, 13824]:
        X = torch.randn(TOKENS, d, device="cuda").bfloat16()
        H = torch.zeros(d, d, device="cuda")
        flops = d * d * TOKENS
        base = timed(lambda H=H, X=X: H.addmm_(X.T.float(), X.float()), reps=3)
        rows.append(dict(op="hessian", impl="torch-addmm", d=d, tokens=TOKENS, seconds=base,
                         tflops=flops / base / 1e12))
        want = torch.zeros(d, d, device="cuda")
        want.addmm_(X.T.float(), X.float())
        for impl in available("hessian"):
            H.zero_()
            hessian_accumulate(H, X, backend=impl)
            rel = ((H - want).abs().max() / want.abs().max()).item()
            t = timed(lambda H=H, X=X, impl=impl: hessian_accumulate(H, X, backend=impl), reps=5)
            tf = flops / t / 1e12
            rows.append(dict(op="hessian", impl=impl, d=d, tokens=TOKENS, seconds=t, tflops=tf,
                             speedup_vs_addmm=base / t, fraction_of_gemm_peak=tf /
                             pk["bf16_gemm_tflops"], max_rel_diff_vs_addmm=rel))
            log.info("hessian d=%d %s: %.2f ms (%.0f TFLOP/s, %.2fx addmm)", d, impl, t * 1e3,
                     tf, base / t)
        del X, H, want
        torch.cuda.empty_cache()
    return rows


def _peer(W: torch.Tensor, H: torch.Tensor, kw: dict) -> torch.Tensor:
    """llm-compressor's result for ssgr's pattern ``kw`` (blocksize 128, percdamp 0.01)."""
    from ssgr.compat.peers import llmcompressor_sparsify, peer_pattern

    return llmcompressor_sparsify(W, H, *peer_pattern(**kw), blocksize=128)[0]


def bench_sparsegpt(quick: bool) -> list[dict]:
    from ssgr.ops import sparsegpt_prune

    try:
        import llmcompressor  # noqa: F401

        peer_reason = None
    except ImportError as exc:
        peer_reason = f"llm-compressor not importable: {exc}"
        log.warning("%s", peer_reason)
    rows = []
    for r, c in [(5120, 13824)] if quick else SPARSEGPT_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(r * 7 + c)
        X = torch.randn(2 * c, c, device="cuda", generator=g)
        H = X.T @ X / X.shape[0]
        del X
        W = torch.randn(r, c, device="cuda", generator=g)
        for name, kw in PATTERNS.items():
            base = None
            Qp = None
            if peer_reason is None:
                Qp = _peer(W, H, kw)
                base = timed(lambda W=W, H=H, kw=kw: _peer(W, H, kw), reps=1 if quick else 3,
                             warmup=0)
                rows.append(dict(op="sparsegpt", impl="llm-compressor", shape=[r, c],
                                 pattern=name, seconds=base))
            for impl in available("sparsegpt"):
                out = sparsegpt_prune(W, H, backend=impl, **kw)
                def run(W=W, H=H, impl=impl, kw=kw):
                    return sparsegpt_prune(W, H, backend=impl, **kw)

                t = timed(run, reps=3)
                row = dict(op="sparsegpt", impl=impl, shape=[r, c], pattern=name, seconds=t,
                           loss=out.loss, damping=out.damping)
                if Qp is not None:
                    row.update(
                        speedup_vs_llmcompressor=base / t,
                        mask_mismatch=int(((out.weight != 0) != (Qp != 0)).sum()),
                        max_abs_diff=(out.weight - Qp).abs().max().item(),
                        numel=W.numel(),
                    )
                rows.append(row)
                log.info("sparsegpt %dx%d %s %s: %.1f ms%s", r, c, name, impl, t * 1e3,
                         f" ({base / t:.1f}x llm-compressor)" if base else "")
        del W, H
        torch.cuda.empty_cache()
    if peer_reason is not None:
        rows.append(dict(op="sparsegpt", impl="llm-compressor", unavailable=peer_reason))
    return rows


def bench_masks(pk: dict, quick: bool) -> list[dict]:
    from ssgr.ops import nm_mask, topk_mask
    from ssgr.ops import reference as ref

    rows = []
    for r, c in [(13824, 5120)] if quick else SPARSEGPT_SHAPES:
        s = torch.randn(r, c, device="cuda")
        want = ref.nm_mask(s, 2, 4)
        t_ref = timed(lambda s=s: ref.nm_mask(s, 2, 4), reps=5)
        rows.append(dict(op="nm_mask", impl="reference", shape=[r, c], seconds=t_ref))
        for impl in available("nm_mask"):
            same = bool(torch.equal(nm_mask(s, 2, 4, backend=impl), want))
            t = timed(lambda s=s, impl=impl: nm_mask(s, 2, 4, backend=impl), reps=20)
            gbps = s.numel() * 5 / t / 1e9
            rows.append(dict(op="nm_mask", impl=impl, shape=[r, c], seconds=t, gbps=gbps,
                             fraction_of_copy_bw=gbps / pk["d2d_copy_gbps"], equal=same))
            log.info("nm_mask 2:4 %dx%d %s: %.3f ms, %.0f GB/s (%.0f%% of copy)", r, c, impl,
                     t * 1e3, gbps, 100 * gbps / pk["d2d_copy_gbps"])
        k = c // 2
        t_ref = timed(lambda s=s, k=k: ref.topk_mask(s, k, "row"), reps=3)
        rows.append(dict(op="topk_mask", impl="reference", shape=[r, c], seconds=t_ref))
        want = ref.topk_mask(s, k, "row")
        for impl in available("topk_mask"):
            same = bool(torch.equal(topk_mask(s, 0.5, "row", backend=impl), want))
            t = timed(lambda s=s, impl=impl: topk_mask(s, 0.5, "row", backend=impl), reps=5)
            rows.append(dict(op="topk_mask", impl=impl, shape=[r, c], seconds=t,
                             speedup_vs_reference=t_ref / t, equal=same))
        del s
    return rows


def goals(results: dict) -> dict:
    """The issue's performance goals, from this run's rows (None where not measured)."""
    out: dict[str, object] = {}
    for impl in ("triton", "cuda"):
        h = [x for x in results["hessian"] if x["impl"] == impl and x["d"] == 5120]
        out[f"hessian_{impl}_>=1.5x_addmm"] = h[0]["speedup_vs_addmm"] >= 1.5 if h else None
        o = [x for x in results["sparsegpt"]
             if x.get("impl") == impl and x.get("shape") == [5120, 13824]
             and "speedup_vs_llmcompressor" in x]
        out[f"sparsegpt_{impl}_>=10x_llmcompressor"] = (
            all(x["speedup_vs_llmcompressor"] >= 10 for x in o) if o else None
        )
        m = [x for x in results["masks"] if x["op"] == "nm_mask" and x["impl"] == impl]
        out[f"nm_mask_{impl}_>=70%_copy_bw"] = (
            all(x["fraction_of_copy_bw"] >= 0.7 for x in m) if m else None
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one shape per op, fewer repeats")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: results/gpu-<dev>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        log.error("no CUDA device: benchmarks/gpu.py runs on a GPU machine (make gpu)")
        return 2
    dev = torch.cuda.get_device_name(0)
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    out = args.out or HERE / "results" / f"gpu-{slug}.json"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    t0 = time.time()
    pk = peaks(args.quick)
    results = {
        "device": dev,
        "capability": list(torch.cuda.get_device_capability(0)),
        "host": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "quick": args.quick,
        "peaks": pk,
        "hessian": bench_hessian(pk, args.quick),
        "sparsegpt": bench_sparsegpt(args.quick),
        "masks": bench_masks(pk, args.quick),
    }
    results["goals"] = goals(results)
    results["seconds"] = time.time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log.info("goals: %s", json.dumps(results["goals"]))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
