"""Build script for ssgr's native extensions.

* ``ssgr._C``: the CPU kernels (C++17, OpenMP, pybind11) from ``csrc/*.cpp``. Always built; it
  needs GCC >= 9 (the kernels use GCC vector builtins) and the pybind11 headers: those of the
  ``pybind11`` package when it is importable, else the copy that torch ships in
  ``torch/include/pybind11`` (no torch headers otherwise: tensors cross the boundary as raw
  pointers).
* ``ssgr._cuda``: the CUDA kernels from ``csrc/*.cu`` (+ the bindings ``csrc/cuda_*.cpp``). Built
  only
  when torch has CUDA, ``nvcc`` is found and there are ``.cu`` sources; ``SSGR_SKIP_CUDA=1`` skips
  it. Arch list from ``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0a``).

``kernels/`` (Triton) is installed as ``ssgr.kernels``: a top-level ``kernels`` package would
shadow the PyPI package of that name, which transformers probes for.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    sys.stderr.write(f"[ssgr setup] {msg}\n")


def check_compiler() -> str | None:
    """None when the C++ compiler is GCC >= 9, else the message printed before the build."""
    cxx = shlex.split(os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++")
    try:
        macros = subprocess.run(
            [*cxx, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True,
            timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return (
            f"cannot run the C++ compiler {' '.join(cxx)!r} ({exc}); "
            "GCC >= 9 is required for ssgr._C"
        )
    found = dict(re.findall(r"#define (__clang__|__GNUC__) (\d+)", macros))
    if "__clang__" in found or "__GNUC__" not in found:
        return (
            f"the C++ compiler {' '.join(cxx)!r} is not GCC; GCC >= 9 is required for ssgr._C "
            "(its kernels use GCC vector builtins): install g++ and set CXX=g++"
        )
    if int(found["__GNUC__"]) < 9:
        return f"{' '.join(cxx)!r} is GCC {found['__GNUC__']}; GCC >= 9 is required for ssgr._C"
    return None


_CPU_FLAGS = [
    "-O3", "-fopenmp",
    # no FMA contraction, so the OBS column loop rounds exactly like the reference (one
    # multiply, one subtract per element)
    "-ffp-contract=off",
]


def cpu_extension():
    """The ``ssgr._C`` extension; with pybind11's helpers when importable, else with plain
    setuptools and the pybind11 headers bundled with torch."""
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
        if not os.path.basename(p).startswith("cuda_")
    )
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        Pybind11Extension = None
    if Pybind11Extension is not None:
        return Pybind11Extension(
            "ssgr._C", sources, cxx_std=17, extra_compile_args=_CPU_FLAGS,
            extra_link_args=["-fopenmp"],
        )
    from setuptools import Extension

    include = torch_pybind11_include()
    if include is None:
        raise SystemExit(
            "[ssgr setup] building ssgr._C needs the pybind11 headers: pip install pybind11 "
            "(or install torch first, which ships them)"
        )
    _log(f"pybind11 is not importable; using the headers bundled with torch in {include}")
    return Extension(
        "ssgr._C", sources, language="c++", include_dirs=[include],
        extra_compile_args=["-std=c++17", "-fvisibility=hidden", *_CPU_FLAGS],
        extra_link_args=["-fopenmp"],
    )


def torch_pybind11_include() -> str | None:
    """torch's include directory when it holds ``pybind11/pybind11.h``, else None."""
    try:
        import torch
    except ImportError:
        return None
    include = os.path.join(os.path.dirname(torch.__file__), "include")
    return include if os.path.isfile(os.path.join(include, "pybind11", "pybind11.h")) else None


def cuda_extension_or_reason():
    """Return (extension, None) when the CUDA build can run here, else (None, reason)."""
    if os.environ.get("SSGR_SKIP_CUDA", "0") == "1":
        return None, "SSGR_SKIP_CUDA=1"
    cu_sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu")))
    if not cu_sources:
        return None, "no csrc/*.cu sources"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, CUDAExtension
    except ImportError as exc:  # pragma: no cover - torch is a build requirement
        return None, f"torch not importable: {exc}"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU build"
    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return None, "nvcc not found"
    sources = [os.path.relpath(p, ROOT) for p in cu_sources]
    sources += sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cuda_*.cpp"))
    )
    ext = CUDAExtension(
        "ssgr._cuda",
        sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
    return ext, None


def build():
    problem = check_compiler()
    if problem is not None:
        _log(problem)
    ext_modules = [cpu_extension()]
    cmdclass = {}
    cuda_ext, reason = cuda_extension_or_reason()
    if cuda_ext is not None:
        from torch.utils.cpp_extension import BuildExtension

        ext_modules.append(cuda_ext)
        cmdclass["build_ext"] = BuildExtension.with_options(no_python_abi_suffix=False)
        _log("building the CUDA extension ssgr._cuda")
    else:
        try:
            from pybind11.setup_helpers import build_ext
        except ImportError:
            from setuptools.command.build_ext import build_ext
        cmdclass["build_ext"] = build_ext
        _log(f"skipping the CUDA extension: {reason}")
    setup(
        packages=find_packages(include=["ssgr", "ssgr.*"]) + ["ssgr.kernels"],
        package_dir={"ssgr": "ssgr", "ssgr.kernels": "kernels"},
        package_data={"ssgr.models": ["tiny/*"]},
        include_package_data=True,
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )


if __name__ == "__main__":
    build()
