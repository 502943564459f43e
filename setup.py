"""Build script for ssgr's native extensions.

* ``ssgr._C``: the CPU kernels (C++17, OpenMP, pybind11) from ``csrc/*.cpp``. Always built; it
  needs only a C++ compiler (no torch headers: tensors cross the boundary as raw pointers).
* ``ssgr._cuda``: the CUDA kernels from ``csrc/*.cu`` (+ the bindings ``csrc/cuda_*.cpp``). Built only
  when torch has CUDA, ``nvcc`` is found and there are ``.cu`` sources; ``SSGR_SKIP_CUDA=1`` skips
  it. Arch list from ``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0a``).

``kernels/`` (Triton) is installed as ``ssgr.kernels``: a top-level ``kernels`` package would
shadow the PyPI package of that name, which transformers probes for.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    sys.stderr.write(f"[ssgr setup] {msg}\n")


def cpu_extension():
    from pybind11.setup_helpers import Pybind11Extension

    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
        if not os.path.basename(p).startswith("cuda_")
    )
    return Pybind11Extension(
        "ssgr._C",
        sources,
        cxx_std=17,
        # -ffp-contract=off: no FMA contraction, so the OBS column loop rounds exactly like
        # the reference (one multiply, one subtract per element).
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    )


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
    ext_modules = [cpu_extension()]
    cmdclass = {}
    cuda_ext, reason = cuda_extension_or_reason()
    if cuda_ext is not None:
        from torch.utils.cpp_extension import BuildExtension

        ext_modules.append(cuda_ext)
        cmdclass["build_ext"] = BuildExtension.with_options(no_python_abi_suffix=False)
        _log("building the CUDA extension ssgr._cuda")
    else:
        from pybind11.setup_helpers import build_ext

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
