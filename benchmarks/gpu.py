"""``make gpu``'s goal benchmarks: ssgr's GPU backends at R1-Distill-Qwen-14B layer shapes side by
side with the torch baselines and llm-compressor, ratios taken in one run, JSON written to
``--out`` (``benchmarks/gpu_run.py`` names it after the device; the device is named inside too).

Measured, all with CUDA events on a GPU (median of several runs after a warm-up):

* peaks: bf16 GEMM TFLOP/s (``torch.mm`` 8192^3) and device-to-device copy bandwidth (1 GiB);
* Hessian: ``X[32768, d]`` bf16 at d = 5120 and 13824 against two baselines, the honest one
  ``H.add_(torch.mm(X.T, X, out_dtype=torch.float32))`` (cuBLAS bf16 tensor-core GEMM with an fp32
  result; ``aten::mm.dtype`` has a CUDA kernel only: "torch-mm-fp32out") and the fp32-upcast
  ``H.addmm_(X.T.float(), X.float())`` ("torch-addmm"); TFLOP/s counting ``d^2 * tokens`` FLOPs,
  against the GEMM peak (goal: >= 1.5x torch-addmm at d=5120; a backend beats the honest
  baseline or says so);
* SparseGPT: W 5120x5120, 13824x5120, 5120x13824 at 2:4 and 50%, llm-compressor's
  ``sparsify_weight`` on the GPU vs the backends, with mask mismatches and max difference
  against it (goal: >= 10x at 5120x13824 with identical results);
* masks: 2:4 keep mask bandwidth (4 B read + 1 B written per score) against the copy bandwidth
  (goal: >= 70%); per-row 50% top-k against the reference; layer-wide 50% top-k against
  ``torch.kthvalue`` over the flattened layer ("torch-kthvalue").

``--dry-run`` runs the same code at tiny shapes on CPU tensors (the triton backend in triton's
interpreter when ``TRITON_INTERPRET=1`` was set before the run; timing with ``perf_counter``):
a rehearsal of the script, never a measurement (``"dry_run": true`` in the JSON).

Run: ``python benchmarks/gpu.py [--quick] [--dry-run] [--out PATH]`` on a machine with a CUDA
device and ssgr installed with its CUDA extension (``make gpu`` does both).
"""

from __future__ import annotations

import argparse
import dataclasses
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
PATTERNS = {"2:4": dict(n=2, m=4), "50%": dict(sparsity=0.5)}
MM_FP32OUT = "torch-mm-fp32out"


@dataclasses.dataclass(frozen=True)
class Setup:
    """Shapes and repeats of one run: R1-Distill-Qwen-14B layers on a GPU, tiny ones in a dry
    run."""

    device: str
    tokens: int
    hessian_widths: tuple[int, ...]
    sparsegpt_shapes: tuple[tuple[int, int], ...]
    mask_shapes: tuple[tuple[int, int], ...]
    gemm_n: int
    copy_mib: int
    reps: int  # 1 (dry run) or the normal repeats

    @property
    def dry(self) -> bool:
        return self.device == "cpu"


def setup(quick: bool, dry_run: bool) -> Setup:
    if dry_run:
        return Setup("cpu", 96, (48,), ((16, 64),), ((16, 64),), 64, 1, 1)
    if quick:
        return Setup("cuda", 32768, (5120,), ((5120, 13824),), ((13824, 5120),), 4096, 256, 3)
    shapes = ((5120, 5120), (13824, 5120), (5120, 13824))
    return Setup("cuda", 32768, (5120, 13824), shapes, shapes, 8192, 1024, 3)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], reps: int, warmup: int = 1, device: str = "cuda") -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup`` runs: CUDA events on a GPU,
    ``time.perf_counter`` on CPU (dry run)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(max(1, reps)):
        if device == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def peaks(su: Setup) -> dict:
    """bf16 GEMM TFLOP/s and device-to-device copy GB/s of this device."""
    n, dev = su.gemm_n, su.device
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    t = timed(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), reps=10 * su.reps // 3 or 1,
              warmup=3, device=dev)
    gemm = 2 * n**3 / t / 1e12
    del a, b, c
    nbytes = su.copy_mib << 20
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t = timed(lambda dst=dst, src=src: dst.copy_(src), reps=20 * su.reps // 3 or 1, warmup=3,
              device=dev)
    copy = 2 * nbytes / t / 1e9
    log.info("peaks: bf16 GEMM %.3g TFLOP/s, D2D copy %.3g GB/s", gemm, copy)
    return {"bf16_gemm_tflops": gemm, "d2d_copy_gbps": copy}


def available(op: str) -> list[str]:
    """The GPU backends of ``op`` that can run here (triton runs on CPU tensors only in the
    interpreter, i.e. in a dry run with ``TRITON_INTERPRET=1``)."""
    from ssgr.ops import support_matrix

    m = support_matrix()[op]
    for b in ("triton", "cuda"):
        if m[b] is not None:
            log.warning("%s %s unavailable: %s", op, b, m[b])
    return [b for b in ("triton", "cuda") if m[b] is None]


def _mm_fp32out(H: torch.Tensor, X: torch.Tensor) -> None:
    H.add_(torch.mm(X.T, X, out_dtype=torch.float32))


def bench_hessian(pk: dict, su: Setup) -> list[dict]:
    from ssgr.ops import hessian_accumulate

    rows: list[dict] = []
    dev, tokens = su.device, su.tokens
    for d in su.hessian_widths:
        X = torch.randn(tokens, d, device=dev).bfloat16()
        H = torch.zeros(d, d, device=dev)
        flops = d * d * tokens
        common = dict(op="hessian", d=d, tokens=tokens)
        base = timed(lambda H=H, X=X: H.addmm_(X.T.float(), X.float()), reps=su.reps, device=dev)
        rows.append(dict(common, impl="torch-addmm", seconds=base, tflops=flops / base / 1e12))
        mm = None
        if dev == "cuda":
            mm = timed(lambda H=H, X=X: _mm_fp32out(H, X), reps=su.reps, device=dev)
            rows.append(dict(common, impl=MM_FP32OUT, seconds=mm, tflops=flops / mm / 1e12))
        else:
            rows.append(dict(common, impl=MM_FP32OUT,
                             unavailable="aten::mm.dtype has a CUDA kernel only"))
        want = torch.zeros(d, d, device=dev)
        want.addmm_(X.T.float(), X.float())
        for impl in available("hessian"):
            H.zero_()
            hessian_accumulate(H, X, backend=impl)
            rel = ((H - want).abs().max() / want.abs().max()).item()
            t = timed(lambda H=H, X=X, impl=impl: hessian_accumulate(H, X, backend=impl),
                      reps=su.reps + 2 * (su.reps > 1), device=dev)
            tf = flops / t / 1e12
            row = dict(common, impl=impl, seconds=t, tflops=tf, speedup_vs_addmm=base / t,
                       fraction_of_gemm_peak=tf / pk["bf16_gemm_tflops"],
                       max_rel_diff_vs_addmm=rel)
            if mm is not None:
                row["speedup_vs_mm_fp32out"] = mm / t
            rows.append(row)
            log.info("hessian d=%d %s: %.3g ms (%.3g TFLOP/s, %.2fx addmm%s)", d, impl, t * 1e3,
                     tf, base / t, f", {mm / t:.2f}x mm fp32-out" if mm else "")
        del X, H, want
        _empty_cache(dev)
    return rows


def _empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def _peer(W: torch.Tensor, H: torch.Tensor, kw: dict) -> torch.Tensor:
    """llm-compressor's result for ssgr's pattern ``kw`` (blocksize 128, percdamp 0.01)."""
    from ssgr.compat.peers import llmcompressor_sparsify, peer_pattern

    return llmcompressor_sparsify(W, H, *peer_pattern(**kw), blocksize=128)[0]


def bench_sparsegpt(su: Setup) -> list[dict]:
    from ssgr.ops import sparsegpt_prune

    try:
        import llmcompressor  # noqa: F401

        peer_reason = None
    except ImportError as exc:
        peer_reason = f"llm-compressor not importable: {exc}"
        log.warning("%s", peer_reason)
    rows: list[dict] = []
    dev = su.device
    for r, c in su.sparsegpt_shapes:
        g = torch.Generator(device=dev).manual_seed(r * 7 + c)
        X = torch.randn(2 * c, c, device=dev, generator=g)
        H = X.T @ X / X.shape[0]
        del X
        W = torch.randn(r, c, device=dev, generator=g)
        for name, kw in PATTERNS.items():
            base = None
            Qp = None
            if peer_reason is None:
                Qp = _peer(W, H, kw)
                base = timed(lambda W=W, H=H, kw=kw: _peer(W, H, kw), reps=su.reps, warmup=0,
                             device=dev)
                rows.append(dict(op="sparsegpt", impl="llm-compressor", shape=[r, c],
                                 pattern=name, seconds=base))
            for impl in available("sparsegpt"):
                out = sparsegpt_prune(W, H, backend=impl, **kw)

                def run(W=W, H=H, impl=impl, kw=kw):
                    return sparsegpt_prune(W, H, backend=impl, **kw)

                t = timed(run, reps=su.reps, device=dev)
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
                log.info("sparsegpt %dx%d %s %s: %.3g ms%s", r, c, name, impl, t * 1e3,
                         f" ({base / t:.2f}x llm-compressor)" if base else "")
        del W, H
        _empty_cache(dev)
    if peer_reason is not None:
        rows.append(dict(op="sparsegpt", impl="llm-compressor", unavailable=peer_reason))
    return rows


def layer_kthvalue(s: torch.Tensor, k: int) -> torch.Tensor:
    """The layer-wide baseline: keep every score above the k-th smallest of the whole layer
    (``torch.kthvalue``; random fp32 scores have no ties, so it equals ssgr's mask)."""
    if k == 0:
        return torch.ones(s.shape, dtype=torch.bool, device=s.device)
    return s > torch.kthvalue(s.flatten(), k).values


def bench_masks(pk: dict, su: Setup) -> list[dict]:
    from ssgr.ops import nm_mask, topk_mask
    from ssgr.ops import reference as ref

    rows: list[dict] = []
    dev, reps = su.device, su.reps
    for r, c in su.mask_shapes:
        s = torch.randn(r, c, device=dev)
        want = ref.nm_mask(s, 2, 4)
        t_ref = timed(lambda s=s: ref.nm_mask(s, 2, 4), reps=reps + 2 * (reps > 1), device=dev)
        rows.append(dict(op="nm_mask", impl="reference", shape=[r, c], seconds=t_ref))
        for impl in available("nm_mask"):
            same = bool(torch.equal(nm_mask(s, 2, 4, backend=impl), want))
            t = timed(lambda s=s, impl=impl: nm_mask(s, 2, 4, backend=impl),
                      reps=reps * 7 - 1 if reps > 1 else 1, device=dev)
            gbps = s.numel() * 5 / t / 1e9
            rows.append(dict(op="nm_mask", impl=impl, shape=[r, c], seconds=t, gbps=gbps,
                             fraction_of_copy_bw=gbps / pk["d2d_copy_gbps"], equal=same))
            log.info("nm_mask 2:4 %dx%d %s: %.3g ms, %.3g GB/s (%.0f%% of copy)", r, c, impl,
                     t * 1e3, gbps, 100 * gbps / pk["d2d_copy_gbps"])
        k = c // 2
        t_ref = timed(lambda s=s, k=k: ref.topk_mask(s, k, "row"), reps=reps, device=dev)
        rows.append(dict(op="topk_mask", per="row", impl="reference", shape=[r, c],
                         seconds=t_ref))
        want = ref.topk_mask(s, k, "row")
        for impl in available("topk_mask"):
            same = bool(torch.equal(topk_mask(s, 0.5, "row", backend=impl), want))
            t = timed(lambda s=s, impl=impl: topk_mask(s, 0.5, "row", backend=impl),
                      reps=reps + 2 * (reps > 1), device=dev)
            rows.append(dict(op="topk_mask", per="row", impl=impl, shape=[r, c], seconds=t,
                             speedup_vs_reference=t_ref / t, equal=same))
        kl = s.numel() // 2
        t_kth = timed(lambda s=s, kl=kl: layer_kthvalue(s, kl), reps=reps, device=dev)
        rows.append(dict(op="topk_mask", per="layer", impl="torch-kthvalue", shape=[r, c],
                         seconds=t_kth))
        want = layer_kthvalue(s, kl)
        for impl in available("topk_mask"):
            same = bool(torch.equal(topk_mask(s, 0.5, "layer", backend=impl), want))
            t = timed(lambda s=s, impl=impl: topk_mask(s, 0.5, "layer", backend=impl),
                      reps=reps, device=dev)
            rows.append(dict(op="topk_mask", per="layer", impl=impl, shape=[r, c], seconds=t,
                             speedup_vs_kthvalue=t_kth / t, equal=same))
            log.info("topk_mask 50%% per layer %dx%d %s: %.3g ms (%.2fx kthvalue)", r, c, impl,
                     t * 1e3, t_kth / t)
        del s
    return rows


def goals(results: dict) -> dict:
    """The issue's performance goals, from this run's rows (None where not measured; a dry run
    measures nothing)."""
    out: dict[str, object] = {}
    dry = results.get("dry_run", False)
    for impl in ("triton", "cuda"):
        h = [x for x in results["hessian"] if x["impl"] == impl and x["d"] == 5120]
        out[f"hessian_{impl}_>=1.5x_addmm"] = h[0]["speedup_vs_addmm"] >= 1.5 if h else None
        out[f"hessian_{impl}_beats_mm_fp32out"] = (
            h[0]["speedup_vs_mm_fp32out"] > 1 if h and "speedup_vs_mm_fp32out" in h[0] else None
        )
        o = [x for x in results["sparsegpt"]
             if x.get("impl") == impl and x.get("shape") == [5120, 13824]
             and "speedup_vs_llmcompressor" in x]
        out[f"sparsegpt_{impl}_>=10x_llmcompressor"] = (
            all(x["speedup_vs_llmcompressor"] >= 10 for x in o) if o else None
        )
        m = [x for x in results["masks"] if x["op"] == "nm_mask" and x["impl"] == impl]
        out[f"nm_mask_{impl}_>=70%_copy_bw"] = (
            all(x["fraction_of_copy_bw"] >= 0.7 for x in m) if m and not dry else None
        )
        lay = [x for x in results["masks"] if x.get("per") == "layer" and x["impl"] == impl]
        out[f"topk_layer_{impl}_beats_kthvalue"] = (
            all(x["speedup_vs_kthvalue"] > 1 for x in lay) if lay and not dry else None
        )
    if dry:
        out = {k: None for k in out}
    return out


def device_name(device: str) -> str:
    """The device as torch names it (the CPU in a dry run)."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}), dry run"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one shape per op, fewer repeats")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes on CPU tensors (triton in its interpreter): a rehearsal")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default: results/gpu-<device>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.dry_run and not torch.cuda.is_available():
        log.error("no CUDA device: benchmarks/gpu.py runs on a GPU machine (make gpu); "
                  "--dry-run rehearses it on CPU")
        return 2
    su = setup(args.quick, args.dry_run)
    dev = device_name(su.device)
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    out = args.out or HERE / "results" / f"gpu-{slug}.json"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    t0 = time.time()
    results: dict = {
        "device": dev,
        "dry_run": su.dry,
        "capability": list(torch.cuda.get_device_capability(0)) if not su.dry else None,
        "host": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "quick": args.quick,
        "setup": dataclasses.asdict(su),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # each section is written as soon as it is done: a later failure or timeout keeps the rest
    for key, fn in (("peaks", lambda: peaks(su)),
                    ("hessian", lambda: bench_hessian(results["peaks"], su)),
                    ("sparsegpt", lambda: bench_sparsegpt(su)),
                    ("masks", lambda: bench_masks(results["peaks"], su))):
        results[key] = fn()
        results["seconds"] = time.time() - t0
        out.write_text(json.dumps(results, indent=2) + "\n")
    results["goals"] = goals(results)
    results["seconds"] = time.time() - t0
    out.write_text(json.dumps(results, indent=2) + "\n")
    log.info("goals: %s", json.dumps(results["goals"]))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
