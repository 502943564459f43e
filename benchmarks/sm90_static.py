"""Static sm_90a checks of every GPU kernel, on a machine without a GPU (``make gpu-check``).

Every Triton kernel of ``ssgr.kernels`` is compiled ahead of time for sm_90a
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``) at every dtype and
constexpr configuration its launcher can choose (listed in :func:`triton_configs`, read from the
kernel modules' own config tables where they export one), and every ``__global__`` kernel of
``csrc/*.cu`` is compiled by nvcc for sm_90a with the flags of ``make cuda-check``. ``ptxas -v``
gives registers, spill stores / loads, stack frame and static shared memory per kernel (Triton's
own ptxas with the flags Triton passes it; nvcc's for the CUDA sources); Triton's metadata gives
the shared memory it allocates; the PTX and the SASS (``cuobjdump -sass``) show whether tensor-core
instructions are present (PTX ``wgmma.mma_async`` / ``mma.sync`` / ``wmma.mma``; SASS ``HGMMA`` /
``HMMA``). Nothing is run: the table is compiler output, not a GPU measurement.

Rules (a failing row makes the exit status 1):

* **Spills.** ptxas reports spills per kernel, not per loop, and cannot show that a spill sits
  outside the main loop; so any spill store in a kernel fails it. The stack frame alone (local
  arrays, e.g. the per-thread group scores of ``csrc/sparsegpt.cu``) is reported, not failed.
* **Tensor cores.** A Triton config claims tensor cores when its kernel's source calls ``tl.dot``
  and the config's operands are bf16/fp16 (fp32 operands go through IEEE FMA on purpose). A CUDA
  kernel claims them when its own body uses WMMA (``wmma::mma_sync``) or inline ``mma`` /
  ``wgmma`` PTX. A claiming kernel fails unless the PTX or the SASS has tensor-core instructions.

Specialisation: Triton kernels are compiled with 16-byte aligned pointers and unspecialised 32-bit
integer arguments (the general case; at run time Triton may also specialise an integer equal to 1
or divisible by 16). Triton's cache goes to a temporary directory removed at the end: nothing is
reused between runs. A kernel a module no longer defines is skipped with a log line.

Usage: ``python benchmarks/sm90_static.py [--write benchmarks/results/sm90a-static.md]
[--only SUBSTRING] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

log = logging.getLogger("ssgr.sm90_static")

ROOT = Path(__file__).resolve().parent.parent
ARCH = "sm_90a"
NVCC_FLAGS = ("-std=c++17", f"-arch={ARCH}", "-O3", "--use_fast_math", "-Werror", "all-warnings")
TC_PTX = re.compile(r"\b(wgmma\.mma_async|mma\.sync|wmma\.mma)")
TC_SASS = re.compile(r"\b(HGMMA|HMMA)\b")
TC_CUDA_SOURCE = re.compile(r"mma_sync\s*\(|\bmma\.sync\b|\bwgmma\b")


# ------------------------------------------------------------------------------ ptxas / SASS


@dataclasses.dataclass
class PtxasStats:
    """One entry function's line of ``ptxas -v``: bytes, except ``regs``."""

    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict[str, PtxasStats]:
    """Entry functions of a ``ptxas -v`` log (as printed by ptxas or forwarded by nvcc) ->
    their stats. Device functions that ptxas reports on their own are left out."""
    stats: dict[str, PtxasStats] = {}
    entry: str | None = None
    props: str | None = None
    frames: dict[str, tuple[int, int, int]] = {}
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            entry = m.group(1)
            stats[entry] = PtxasStats()
        elif m := _PROPS.search(line):
            props = m.group(1)
        elif (m := _FRAME.search(line)) and props is not None:
            frames[props] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif (m := _USED.search(line)) and entry is not None:
            st = stats[entry]
            st.regs = int(m.group(1))
            if s := _SMEM.search(line):
                st.smem = int(s.group(1))
    for name, st in stats.items():
        st.stack, st.spill_stores, st.spill_loads = frames.get(name, (0, 0, 0))
    return stats


_SASS_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_SASS_TARGET = re.compile(r"0x([0-9a-f]+)")
_LOCAL = re.compile(r"\b(STL|LDL)\b")


def sass_functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    """``cuobjdump -sass`` text -> ``(address, instruction)`` per function."""
    out: dict[str, list[tuple[int, str]]] = {}
    name = None
    for line in sass.splitlines():
        if "Function : " in line:
            name = line.split("Function : ", 1)[1].strip()
            out[name] = []
        elif name is not None and (m := _SASS_INS.search(line)):
            out[name].append((int(m.group(1), 16), m.group(2).strip()))
    return out


def tensor_ops(code: list[tuple[int, str]]) -> set[str]:
    """Tensor-core SASS opcodes (``HGMMA``, ``HMMA``) in one function's code."""
    return {op for _, ins in code for op in TC_SASS.findall(ins)}


def local_in_loops(code: list[tuple[int, str]]) -> list[str]:
    """Local-memory instructions (``STL`` / ``LDL``: spills, or local arrays) that run inside a
    loop: between a backward branch's target and the branch, or in a subroutine ``CALL``ed from
    there (from its entry to its first ``RET``). An empty list shows every spill of the function
    sits outside its loops."""
    loops = []
    for addr, ins in code:
        op = ins.split()[1] if ins.startswith("@") else ins.split()[0]
        if op.startswith("BRA") and (t := _SASS_TARGET.search(ins)):
            target = int(t.group(1), 16)
            if target < addr:
                loops.append((target, addr))
    ranges = list(loops)
    for addr, ins in code:
        if "CALL" in ins and any(lo <= addr <= hi for lo, hi in loops):
            if t := _SASS_TARGET.search(ins):
                entry = int(t.group(1), 16)
                end = next((a for a, i in code if a >= entry and "RET" in i), code[-1][0])
                ranges.append((entry, end))
    return [
        f"{addr:#06x}: {ins}" for addr, ins in code
        if _LOCAL.search(ins) and any(lo <= addr <= hi for lo, hi in ranges)
    ]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Row:
    """One compiled kernel configuration and what the compiler says about it."""

    kernel: str
    config: str
    stats: PtxasStats
    claims_tc: bool
    tc_found: list[str]
    smem_note: str = ""
    local_in_loop: list[str] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        out = []
        if self.stats.spill_stores > 0 and self.local_in_loop:
            out.append(f"spills {self.stats.spill_stores} B, local memory in a loop "
                       f"({self.local_in_loop[0]})")
        if self.claims_tc and not self.tc_found:
            out.append("claims tensor cores, none in PTX/SASS")
        return out

    def markdown(self) -> str:
        st = self.stats
        if self.tc_found:
            tc = ("yes: " if self.claims_tc else "unclaimed: ") + ", ".join(self.tc_found)
        else:
            tc = "MISSING" if self.claims_tc else "no (not claimed)"
        if self.failures:
            status = "FAIL: " + "; ".join(self.failures)
        elif self.stats.spill_stores:
            status = "ok (spill outside every loop, SASS)"
        else:
            status = "ok"
        smem = f"{st.smem}{self.smem_note}"
        return (
            f"| `{self.kernel}` | {self.config} | {st.regs} | {st.spill_stores} / "
            f"{st.spill_loads} | {st.stack} | {smem} | {tc} | {status} |"
        )


HEADER = (
    "| kernel | config | registers | spill stores / loads (B) | stack (B) | shared memory (B) "
    "| tensor-core instructions | status |\n|---|---|---|---|---|---|---|---|"
)


# ------------------------------------------------------------------------------------ Triton


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """One Triton kernel compile: ``ssgr.kernels.<module>.<kernel>`` with the pointer element
    types (other non-constexpr arguments are i32), constexprs and compile options; ``operand``
    is the dtype its ``tl.dot`` sees (None: no dot or not this config's concern)."""

    module: str
    kernel: str
    pointers: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    options: tuple[tuple[str, object], ...]
    operand: str | None = None

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.constexprs]
        parts += [f"{k}={v}" for k, v in self.options]
        ptrs = sorted({t for _, t in self.pointers})
        return ", ".join(parts + ["ptr " + "/".join(ptrs)])


def _cfg(module: str, kernel: str, pointers: dict[str, str], constexprs: dict,
         options: dict, operand: str | None = None) -> TritonConfig:
    return TritonConfig(module, kernel, tuple(pointers.items()), tuple(constexprs.items()),
                        tuple(options.items()), operand)


_TORCH_TO_TRITON = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def triton_configs() -> list[TritonConfig]:
    """Every configuration the launchers of ``ssgr.kernels`` can choose on a GPU.

    Where the launcher's choice depends on an unbounded input (block width from ``count``, the
    N:M pattern, the row length of a top-k), the list holds every value the launcher can produce
    for ssgr's supported range: OBS blocks of up to 128 columns (every power of two it rounds to)
    plus one wider block (the ``BC > 128`` branch), N:M patterns 2:4 and 4:8 and unstructured,
    and every top-k block width.
    """
    import torch
    from ssgr.kernels import hessian
    from ssgr.kernels import sparsegpt as sgpt

    cfgs: list[TritonConfig] = []
    # kernels/hessian.py: _config() reads GPU_CONFIGS; hessian_accumulate passes TO_WS = split > 1
    for dtype, gc in hessian.GPU_CONFIGS.items():
        dt = _TORCH_TO_TRITON[str(dtype).removeprefix("torch.")]
        opts = {"num_warps": gc["num_warps"], "num_stages": gc["num_stages"]}
        for to_ws in (False, True):
            cfgs.append(_cfg(
                "hessian", "_xtx_kernel",
                {"x_ptr": dt, "h_ptr": "fp32", "ws_ptr": "fp32", "ti_ptr": "i32", "tj_ptr": "i32"},
                dict(BM=gc["BM"], BK=gc["BK"], TO_WS=to_ws, UPCAST=False,
                     IEEE=dtype == torch.float32),
                opts, operand=dt,
            ))
    for bm in sorted({gc["BM"] for gc in hessian.GPU_CONFIGS.values()}):
        cfgs.append(_cfg(
            "hessian", "_reduce_kernel",
            {"ws_ptr": "fp32", "h_ptr": "fp32", "ti_ptr": "i32", "tj_ptr": "i32"},
            dict(BM=bm), {"num_warps": hessian.REDUCE_WARPS},
        ))
    # kernels/sparsegpt.py: obs_block -> gpu_config(count), M = max(m, 1), NM = n_prune > 0
    for count in (16, 32, 64, 128, 256):
        gc = sgpt.gpu_config(count)
        opts = {k: v for k, v in gc.items() if k not in ("BR", "BC")}
        for nm, m in ((False, 1), (True, 4), (True, 8)):
            cfgs.append(_cfg(
                "sparsegpt", "_obs_block_kernel",
                {"w_ptr": "fp32", "u_ptr": "fp32", "prune_ptr": "u8", "keep_ptr": "u8",
                 "err_ptr": "fp32", "loss_ptr": "fp32"},
                dict(M=m, NM=nm, BR=gc["BR"], BC=gc["BC"]), opts,
            ))
    cfgs += _mask_configs()
    return cfgs


def _mask_configs() -> list[TritonConfig]:
    """kernels/masks.py (launch choices copied from its launchers; keep in step with them)."""
    import triton

    score_dtypes = ("fp32", "bf16", "fp16", "fp64")
    cfgs: list[TritonConfig] = []
    # nm_mask: MP = next_pow2(m), BQ = next_pow2(min(1024, 4096 // MP)), num_warps=4
    for dt in score_dtypes:
        for n, m in ((2, 4), (4, 8)):
            mp = triton.next_power_of_2(m)
            bq = triton.next_power_of_2(max(1, min(1024, 4096 // mp)))
            cfgs.append(_cfg("masks", "_nm_mask_kernel", {"s_ptr": dt, "keep_ptr": "u8"},
                             dict(N=n, M=m, MP=mp, BQ=bq), {"num_warps": 4}))
    # topk_mask fused (n_blocks <= 64): BR=1, BLOCK = _block(L, 1024) in 16..1024,
    # num_warps = 8 if BLOCK >= 1024 else 4; IS64 / NBITS from the score dtype
    for dt in score_dtypes:
        is64 = dt == "fp64"
        for block in (16, 32, 64, 128, 256, 512, 1024):
            cfgs.append(_cfg(
                "masks", "_topk_row_kernel", {"s_ptr": dt, "keep_ptr": "u8"},
                dict(IS64=is64, NBITS=64 if is64 else 32, BR=1, BLOCK=block),
                {"num_warps": 8 if block >= 1024 else 4},
            ))
    # topk_mask unfused (n_blocks > 64, so BLOCK = 1024): CHUNKS = n_blocks (> 64) or
    # cdiv(n_blocks, 1024) (>= 1): a loop trip count, compiled at 1 and 128
    for dt in score_dtypes:
        is64 = dt == "fp64"
        kdt = "i64" if is64 else "i32"
        for chunks in (1, 128):
            for equal in (False, True):
                cfgs.append(_cfg(
                    "masks", "_count_kernel",
                    {"s_ptr": dt, "ref_ptr": kdt, "cnt_ptr": "i32"},
                    dict(IS64=is64, BLOCK=1024, CHUNKS=chunks, EQUAL=equal), {"num_warps": 4},
                ))
            cfgs.append(_cfg(
                "masks", "_apply_topk_kernel",
                {"s_ptr": dt, "thr_ptr": kdt, "tie_before_ptr": "i32", "tie_quota_ptr": "i32",
                 "keep_ptr": "u8"},
                dict(IS64=is64, BLOCK=1024, CHUNKS=chunks), {"num_warps": 4},
            ))
    # pack_24: BP = 256, num_warps=4, any floating W dtype
    for dt in ("fp32", "bf16", "fp16"):
        cfgs.append(_cfg("masks", "_pack24_kernel",
                         {"w_ptr": dt, "keep_ptr": "u8", "val_ptr": dt, "meta_ptr": "u8"},
                         dict(BP=256), {"num_warps": 4}))
    return cfgs


def _triton_tools() -> tuple[str, str]:
    import triton

    return triton.knobs.nvidia.ptxas.path, triton.knobs.nvidia.cuobjdump.path


def compile_triton(cfg: TritonConfig, fn=None) -> Row | None:
    """Compile one configuration for sm_90a and read its stats (None: the kernel is gone).
    ``fn`` overrides the kernel looked up from ``cfg`` (tests compile their own kernels)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if fn is None:
        mod = importlib.import_module(f"ssgr.kernels.{cfg.module}")
        fn = getattr(mod, cfg.kernel, None)
        if fn is None:
            return None
    pointers = dict(cfg.pointers)
    constexprs = dict(cfg.constexprs)
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name in pointers:
            signature[p.name] = "*" + pointers[p.name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[p.name] = "i32"
    options = dict(cfg.options)
    kern = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                          target=GPUTarget("cuda", 90, 32), options=options)
    ptx = kern.asm["ptx"]
    ptxas, cuobjdump = _triton_tools()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        fmad = [] if options.get("enable_fp_fusion", True) else ["--fmad=false"]
        out = _run([ptxas, "-lineinfo", *fmad, "-v", f"--gpu-name={ARCH}", str(src), "-o",
                    str(Path(tmp, "v.cubin"))], "ptxas")
        cubin = Path(tmp, "k.cubin")
        cubin.write_bytes(kern.asm["cubin"])
        sass = _run([cuobjdump, "-sass", str(cubin)], "cuobjdump")
    stats = parse_ptxas(out)
    name = kern.metadata.name
    if name not in stats:
        raise RuntimeError(f"ptxas printed no stats for {name}:\n{out}")
    st = stats[name]
    st.smem = max(st.smem, int(kern.metadata.shared))
    code = sass_functions(sass).get(name, [])
    found = sorted(set(TC_PTX.findall(ptx))) + sorted(tensor_ops(code))
    claims = cfg.operand in ("bf16", "fp16") and "tl.dot(" in fn.src
    return Row(f"{cfg.module}.{cfg.kernel}", cfg.label, st, claims, found,
               local_in_loop=local_in_loops(code))


# -------------------------------------------------------------------------------------- CUDA


def cuda_kernels(source: str) -> dict[str, str]:
    """``__global__`` kernel names of a CUDA source -> their bodies (brace-matched)."""
    text = re.sub(r"__launch_bounds__\s*\([^)]*\)", "", source)
    out: dict[str, str] = {}
    for m in re.finditer(r"__global__\s+void\s+(\w+)\s*\(", text):
        depth, i = 1, m.end()
        while depth:  # the parameter list
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        start = text.index("{", i)
        depth, j = 1, start + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out[m.group(1)] = text[start:j]
    return out


def _demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if filt is None or not names:
        return {n: n for n in names}
    proc = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True)
    dem = proc.stdout.splitlines()
    return dict(zip(names, dem, strict=True)) if len(dem) == len(names) else {n: n for n in names}


def compile_cuda(path: Path, nvcc: str) -> list[Row]:
    """Compile one ``csrc/*.cu`` for sm_90a (``make cuda-check``'s flags) and read every kernel."""
    _, cuobjdump = _triton_tools()
    source = path.read_text()
    kernels = cuda_kernels(source)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp, "k.cubin")
        out = _run([nvcc, *NVCC_FLAGS, "-Xptxas", "-v", "-cubin", str(path), "-o", str(cubin)],
                   "nvcc")
        sass = _run([cuobjdump, "-sass", str(cubin)], "cuobjdump")
    stats = parse_ptxas(out)
    funcs = sass_functions(sass)
    names = _demangle(sorted(stats))
    rows = []
    for mangled, st in sorted(stats.items(), key=lambda kv: names[kv[0]]):
        pretty = names[mangled]
        base = next((k for k in kernels if re.search(rf"\b{k}\b\s*[<(]", pretty)), None)
        if base is None:
            raise RuntimeError(f"{path.name}: no __global__ source for {pretty}")
        body = kernels[base]
        tmpl = re.search(rf"\b{base}(<.*?>)\(", pretty)
        config = tmpl.group(1).strip("<>") if tmpl else "-"
        note = " + dynamic" if "extern __shared__" in body else ""
        code = funcs.get(mangled, [])
        rows.append(Row(f"{path.name}:{base}", config, st, bool(TC_CUDA_SOURCE.search(body)),
                        sorted(tensor_ops(code)), note, local_in_loops(code)))
    return rows


# -------------------------------------------------------------------------------------- main


def _versions(nvcc: str | None) -> str:
    import triton

    ptxas, _ = _triton_tools()
    pv = _run([ptxas, "--version"], "ptxas").strip().splitlines()[-1]
    parts = [f"triton {triton.__version__} (its ptxas: {pv})"]
    if nvcc:
        nv = _run([nvcc, "--version"], "nvcc").strip().splitlines()[-1]
        parts.append(f"nvcc {nv}")
    return "; ".join(parts)


def render(rows: list[Row], versions: str) -> str:
    """The committed markdown table."""
    fails = sum(bool(r.failures) for r in rows)
    lines = [
        "# sm_90a static kernel check",
        "",
        "Static compiler output only: every kernel was compiled for sm_90a on a machine without "
        "a GPU and nothing was run. No number here is a GPU measurement (no time, no "
        "occupancy, no bandwidth).",
        "",
        f"Generated by `make gpu-check` (`python benchmarks/sm90_static.py --write "
        f"benchmarks/results/sm90a-static.md`) with {versions}. Rules (see the checker's "
        "docstring): any spill store fails a kernel (ptxas reports spills per kernel, not per "
        "loop); a kernel that claims tensor cores (Triton: `tl.dot` on bf16/fp16 operands; "
        "CUDA: WMMA / mma in its body) fails without `wgmma`/`mma` in its PTX or "
        "`HGMMA`/`HMMA` in its SASS. Triton shared memory is what Triton allocates (dynamic); "
        "CUDA shared memory is the static size (`+ dynamic`: more is set at launch).",
        "",
        f"{len(rows)} kernel configurations, {fails} failing.",
        "",
        HEADER,
        *(r.markdown() for r in rows),
        "",
    ]
    return "\n".join(lines)


def _compile_one(cfg: TritonConfig) -> Row | None:
    return compile_triton(cfg)


def run(only: str | None = None, jobs: int | None = None) -> list[Row]:
    """Compile everything (optionally only kernels whose name contains ``only``) -> rows."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the check compiles for sm_90a")
    cfgs = [c for c in triton_configs() if only is None or only in f"{c.module}.{c.kernel}"]
    rows: list[Row] = []
    jobs = jobs or min(4, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for cfg, row in zip(cfgs, pool.map(_compile_one, cfgs), strict=True):
            if row is None:
                log.info("skipped ssgr.kernels.%s.%s: not defined", cfg.module, cfg.kernel)
            else:
                rows.append(row)
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    cu = sorted((ROOT / "csrc").glob("*.cu"))
    if nvcc is None:
        raise RuntimeError("nvcc is not on PATH (set NVCC): the CUDA sources cannot be checked")
    for path in cu:
        names = [f"{path.name}:{k}" for k in cuda_kernels(path.read_text())]
        if only is None or any(only in n for n in names):
            rows += [r for r in compile_cuda(path, nvcc) if only is None or only in r.kernel]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", type=Path, help="write the markdown table to this file")
    ap.add_argument("--only", help="only kernels whose name contains this")
    ap.add_argument("--jobs", type=int, help="parallel Triton compiles (default: cores, <= 4)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    with tempfile.TemporaryDirectory(prefix="ssgr-sm90-triton-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # nothing reused between runs
        rows = run(args.only, args.jobs)
        nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
        text = render(rows, _versions(nvcc))
    log.info("%s", text)
    if args.write:
        args.write.write_text(text)
        log.info("wrote %s", args.write)
    failing = [r for r in rows if r.failures]
    for r in failing:
        log.error("FAIL %s [%s]: %s", r.kernel, r.config, "; ".join(r.failures))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
