"""The static sm_90a checker (benchmarks/sm90_static.py): its ptxas / SASS parsers on real compiler
output, its rules, and a deliberately spilling kernel reported as a failure.

Compiles run in a subprocess (this process never imports triton) and are skipped, never faked,
where triton or nvcc is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "benchmarks" / "sm90_static.py"


def _checker():
    spec = importlib.util.spec_from_file_location("sm90_static", CHECKER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sm90_static", mod)
    spec.loader.exec_module(mod)
    return mod


S = _checker()

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


# `nvcc -Xptxas -v` on csrc/hessian.cu (CUDA 13.0) and Triton's ptxas on the bf16 Hessian kernel
# before the fix, as printed (the long mangled name split only to fit the line length)
MANGLED = (
    "_ZN9ssgr_cuda43_GLOBAL__N__1f473a7d_10_hessian_cu_4e192baf15xtx_wmma_kernelI13__nv_bfloat16"
    "EEvPKT_llllilPfS6_S6_i"
)
PTXAS_LOG = f"""\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '{MANGLED}' for 'sm_90a'
ptxas info    : Function properties for {MANGLED}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 66 registers, used 1 barriers, 26624 bytes smem
ptxas info    : Compiling entry function '_xtx_kernel' for 'sm_90a'
ptxas info    : Function properties for _xtx_kernel
    208 bytes stack frame, 376 bytes spill stores, 416 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 208 bytes cumulative stack size
ptxas info    : Compile time = 326.020 ms
"""


def test_parse_ptxas_on_real_output():
    stats = S.parse_ptxas(PTXAS_LOG)
    assert len(stats) == 2
    wmma = stats[MANGLED]
    assert (wmma.regs, wmma.spill_stores, wmma.spill_loads, wmma.stack, wmma.smem) == (
        66, 0, 0, 0, 26624
    )
    tri = stats["_xtx_kernel"]
    assert (tri.regs, tri.spill_stores, tri.spill_loads, tri.stack, tri.smem) == (
        255, 376, 416, 208, 0
    )


# cuobjdump -sass excerpts (sm_90a): a spill stored before a loop and reloaded after it, and one
# reloaded inside a loop through a subroutine called from the loop
SASS = """\
\t\tFunction : outside
        /*0430*/                   STL [R1], R4 ;                      /* 0x0000000401007387 */
        /*0670*/                   FADD R2, R2, R3 ;                   /* 0x0000000302027221 */
        /*0ca0*/                   CALL.REL.NOINC 0x1ec0 ;             /* 0x0000001000847944 */
        /*1500*/               @P1 BRA 0x670 ;                         /* 0xfffffff000581947 */
        /*1510*/                   LDL.LU R0, [R1] ;                   /* 0x0000000001007983 */
        /*1520*/                   HMMA.16816.F32 R8, R4, R6, R8 ;     /* 0x000000062408723c */
        /*1eb0*/                   EXIT ;                              /* 0x000000000000794d */
        /*1ec0*/                   FMUL R2, R2, R3 ;                   /* 0x0000000302027220 */
        /*1ed0*/                   RET.REL.NODEC R4 0x0 ;              /* 0xffffffe004c87950 */
\t\tFunction : inside
        /*0100*/                   STL [R1], R4 ;                      /* 0x0000000401007387 */
        /*0200*/                   CALL.REL.NOINC 0x0400 ;             /* 0x0000001000847944 */
        /*0300*/               @P1 BRA 0x200 ;                         /* 0xfffffff000581947 */
        /*0310*/                   EXIT ;                              /* 0x000000000000794d */
        /*0400*/                   LDL R5, [R1] ;                      /* 0x0000000001007983 */
        /*0410*/                   RET.REL.NODEC R4 0x0 ;              /* 0xffffffe004c87950 */
"""


def test_sass_loops_and_tensor_ops():
    funcs = S.sass_functions(SASS)
    assert set(funcs) == {"outside", "inside"}
    assert S.local_in_loops(funcs["outside"]) == []
    assert S.local_in_loops(funcs["inside"]) == ["0x0400: LDL R5, [R1]"]
    assert S.tensor_ops(funcs["outside"]) == {"HMMA"}
    assert S.tensor_ops(funcs["inside"]) == set()


def _row(**kw):
    base = dict(kernel="k", config="-", stats=S.PtxasStats(regs=40), claims_tc=False,
                tc_found=[])
    base.update(kw)
    return S.Row(**base)


def test_rules():
    assert _row().failures == []
    assert _row(claims_tc=True).failures == ["claims tensor cores, none in PTX/SASS"]
    assert _row(claims_tc=True, tc_found=["HGMMA"]).failures == []
    spill = S.PtxasStats(regs=255, spill_stores=8, spill_loads=8, stack=8)
    assert _row(stats=spill, local_in_loop=["0x0400: LDL R5, [R1]"]).failures
    outside = _row(stats=spill)
    assert outside.failures == [] and "outside every loop" in outside.markdown()
    assert "FAIL" in _row(claims_tc=True).markdown()


def test_cuda_source_scan():
    src = textwrap.dedent("""
        template <typename T>
        __global__ void __launch_bounds__(128) tc_kernel(const T* x, int n) {
          if (n) { wmma::mma_sync(acc, a, b, acc); }
        }
        __global__ void plain_kernel(float* y, int n) { for (int i = 0; i < n; ++i) { y[i] = 0; } }
    """)
    k = S.cuda_kernels(src)
    assert set(k) == {"tc_kernel", "plain_kernel"}
    assert S.TC_CUDA_SOURCE.search(k["tc_kernel"])
    assert not S.TC_CUDA_SOURCE.search(k["plain_kernel"])
    assert k["plain_kernel"].endswith("}") and "y[i] = 0" in k["plain_kernel"]


SPILLING_KERNEL = '''
import triton
import triton.language as tl


@triton.jit
def spilling_kernel(x_ptr, y_ptr, n, B: tl.constexpr):
    """B fp32 values of x and of acc per program stay live through the loop: with one warp and
    B=4096 that is 256 registers of data per thread, past sm_90's 255."""
    offs = tl.arange(0, B)
    x = tl.load(x_ptr + offs)
    acc = tl.zeros((B,), dtype=tl.float32)
    for i in range(n):
        acc = acc * x + tl.load(y_ptr + i * B + offs)
    tl.store(x_ptr + offs, acc)
'''

RUN_KERNEL = '''
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import sm90_static as S
import spilling
cfg = S.TritonConfig("test", "spilling_kernel", (("x_ptr", "fp32"), ("y_ptr", "fp32")),
                     (("B", int(sys.argv[3])),), (("num_warps", 1),))
row = S.compile_triton(cfg, fn=spilling.spilling_kernel)
print(json.dumps({"spill": row.stats.spill_stores, "regs": row.stats.regs,
                  "failures": row.failures, "md": row.markdown()}))
'''


@needs_triton
@pytest.mark.parametrize("block, spills", [(4096, True), (256, False)])
def test_spilling_kernel_is_a_failure(tmp_path, block, spills):
    (tmp_path / "spilling.py").write_text(SPILLING_KERNEL)
    env = _env()
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-c", RUN_KERNEL, str(CHECKER.parent), str(tmp_path), str(block)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if spills:
        assert out["spill"] > 0 and out["regs"] == 255
        assert out["failures"] and "local memory in a loop" in out["failures"][0]
        assert "FAIL" in out["md"]
    else:
        assert out["spill"] == 0 and out["failures"] == []


@needs_triton
@needs_nvcc
@pytest.mark.slow
def test_hessian_kernels_pass_the_check(tmp_path):
    """Every Triton and CUDA Hessian configuration compiles spill-free for sm_90a and the
    bf16/fp16 ones carry wgmma (the issue's BM=128 / 8-warp spill is fixed)."""
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(CHECKER), "--only", "hessian", "--write", str(out), "--jobs", "1"],
        capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) >= 8 + 4  # 6 + 2 Triton configs, 4 CUDA kernels
    assert all(line.endswith("| ok |") for line in rows)
    bf16 = [line for line in rows if "_xtx_kernel" in line and "bf16" in line]
    assert bf16 and all("wgmma" in line and "HGMMA" in line for line in bf16)
    assert "Static compiler output only" in out.read_text()
