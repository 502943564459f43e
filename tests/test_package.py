"""Packaging promises: no top-level `kernels`, no work at import, the CLI, the CUDA build switch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    # run from an empty directory so the repo root is not on sys.path
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )


def test_transformers_still_sees_no_kernels_package(tmp_path):
    r = _run(
        "import importlib.util, ssgr, ssgr.kernels\n"
        "assert importlib.util.find_spec('kernels') is None, 'top-level kernels importable'\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "print(is_kernels_available())",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_import_has_no_side_effects(tmp_path):
    r = _run(
        "import logging, sys, ssgr\n"
        "assert 'torch' not in sys.modules, 'import ssgr imported torch'\n"
        "assert not logging.getLogger().handlers, 'import ssgr configured logging'\n"
        "import ssgr.ops\n"
        "assert 'ssgr._C' not in sys.modules and 'triton' not in sys.modules\n",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr


def test_info_prints_the_support_matrix(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ssgr", "info"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for op in ("hessian", "sparsegpt", "nm_mask", "topk_mask", "wanda_scores"):
        assert op in out
    assert "reference" in out and "cpu" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("sparsegpt"))
    assert line.split()[1:3] == ["yes", "yes"]  # reference and the C++ cpu backend run here


def test_demo_prunes_two_four(capsys):
    from ssgr.demo import run_demo

    out = run_demo(sparsity="2:4", layers=1, hidden=64, sequences=2, seq_len=32, seed=3)
    reports = out["reports"]
    assert len(reports) == 7  # q, k, v, o, gate, up, down
    assert all(abs(r.sparsity - 0.5) < 1e-9 and r.tokens == 64 for r in reports)
    assert "model.layers.0.mlp.down_proj" in capsys.readouterr().out


def test_cli_reports_bad_input_cleanly(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ssgr", "demo", "--sparsity", "5:4"], cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2
    assert "need 0 < N < M" in r.stderr and "Traceback" not in r.stderr


def _setup_module():
    spec = importlib.util.spec_from_file_location("ssgr_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only under __main__
    return mod


def test_cuda_build_switch(monkeypatch):
    mod = _setup_module()
    monkeypatch.setenv("SSGR_SKIP_CUDA", "1")
    assert mod.cuda_extension_or_reason() == (None, "SSGR_SKIP_CUDA=1")
    monkeypatch.delenv("SSGR_SKIP_CUDA")
    ext, reason = mod.cuda_extension_or_reason()
    import torch

    if torch.version.cuda is None:
        assert ext is None and reason is not None
    assert mod.cpu_extension().name == "ssgr._C"


@pytest.mark.parametrize(
    "text,expect", [("2:4", (None, 2, 4)), ("0.5", (0.5, 0, 0)), (0.7, (0.7, 0, 0))]
)
def test_parse_pattern(text, expect):
    from ssgr.prune.pattern import parse_pattern

    p = parse_pattern(text)
    assert (p.sparsity, p.n, p.m) == expect


@pytest.mark.parametrize("text", ["4:2", "a:b", "1.0", "half", "-0.1", "0:4"])
def test_parse_pattern_rejects(text):
    from ssgr.prune.pattern import parse_pattern

    with pytest.raises(ValueError):
        parse_pattern(text)


def test_cli_error_handling(monkeypatch, capsys, caplog):
    """An SSGRError is one ERROR line and status 2 (traceback with -v); other errors propagate."""
    import ssgr.info
    from ssgr.cli import main
    from ssgr.errors import InputError

    def bad_input() -> str:
        raise InputError("bad input, fix it")

    monkeypatch.setattr(ssgr.info, "info_text", bad_input)
    with caplog.at_level("ERROR"):
        assert main(["info"]) == 2
    (rec,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert rec.getMessage() == "bad input, fix it" and not rec.exc_info
    caplog.clear()
    with caplog.at_level("ERROR"):
        assert main(["-v", "info"]) == 2
    (rec,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert rec.exc_info is not None and rec.exc_info[0] is InputError

    def kernel_bug() -> str:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(ssgr.info, "info_text", kernel_bug)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["info"])


def test_generator_option_and_deprecated_backend_alias(caplog):
    from ssgr.cli import build_parser
    from ssgr.options import from_args
    from ssgr.run import RunConfig

    p = build_parser()
    assert from_args(RunConfig, p.parse_args(["run"])).generator == "hf"
    with caplog.at_level("WARNING"):
        cfg = from_args(RunConfig, p.parse_args(["run", "--backend", "openai"]))
    assert cfg.generator == "openai"
    assert "--backend is deprecated" in caplog.text and "--generator" in caplog.text
    args = p.parse_args(["generate", "m", "--problems", "p", "--out", "o", "--backend", "vllm"])
    assert args.generator == "vllm"
    # ssgr demo keeps --backend as the kernel backend
    assert p.parse_args(["demo", "--backend", "reference"]).backend == "reference"
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--generator", "nope"])


@pytest.mark.parametrize(
    "cls_path, func_path",
    [
        ("ssgr.data.cli:GenerateConfig", "ssgr.data.generate:generate"),
        ("ssgr.data.cli:SelectConfig", "ssgr.data.select:select"),
        ("ssgr.eval.cli:EvalConfig", "ssgr.eval.accuracy:evaluate"),
        ("ssgr.eval.cli:PplConfig", "ssgr.eval.perplexity:perplexity"),
    ],
)
def test_command_options_match_the_python_api(cls_path, func_path):
    """A command's options are the keyword arguments of its library function, same defaults."""
    import dataclasses
    import importlib
    import inspect

    def load(path):
        mod, name = path.split(":")
        return getattr(importlib.import_module(mod), name)

    cls, func = load(cls_path), load(func_path)
    params = inspect.signature(func).parameters
    from ssgr.data.cli import GENERATOR_OPTIONS

    backend_only = set(GENERATOR_OPTIONS) if cls.__name__ == "GenerateConfig" else set()
    for f in dataclasses.fields(cls):
        if f.name in backend_only:
            continue
        assert f.name in params, f"{cls.__name__}.{f.name} is not an argument of {func.__name__}"
        want = params[f.name].default
        if want is inspect.Parameter.empty:
            continue  # positional: required in both
        assert f.default == want, f"{cls.__name__}.{f.name}: {f.default!r} != {want!r}"


def test_setup_without_pybind11_uses_torch_headers(monkeypatch):
    mod = _setup_module()
    monkeypatch.setitem(sys.modules, "pybind11", None)
    monkeypatch.setitem(sys.modules, "pybind11.setup_helpers", None)
    ext = mod.cpu_extension()
    import torch

    assert ext.name == "ssgr._C" and ext.language == "c++"
    assert ext.include_dirs == [str(Path(torch.__file__).parent / "include")]
    assert "-std=c++17" in ext.extra_compile_args and "-ffp-contract=off" in ext.extra_compile_args


def test_setup_names_gcc_when_the_compiler_is_not_gcc(monkeypatch, tmp_path):
    mod = _setup_module()
    fake = tmp_path / "fake-clang++"
    fake.write_text("#!/bin/sh\necho '#define __clang__ 1'\necho '#define __GNUC__ 4'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert "GCC >= 9 is required for ssgr._C" in mod.check_compiler()
    fake.write_text("#!/bin/sh\necho '#define __GNUC__ 8'\n")
    assert "is GCC 8; GCC >= 9 is required" in mod.check_compiler()
    fake.write_text("#!/bin/sh\necho '#define __GNUC__ 12'\n")
    assert mod.check_compiler() is None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("layers", 0, "--layers must be >= 1, got 0"),  # the sizes of 0
     ("hidden", 0, "--hidden must be >= 1, got 0"),
     ("sequences", 0, "--sequences must be >= 1, got 0"),
     ("seq_len", -3, "--seq-len must be >= 1, got -3"),  # sibling: negative
     ("hidden", 33, "--hidden 33 does not split")],  # sibling: odd head size
)
def test_demo_refuses_impossible_sizes(option, value, message, capsys):
    from ssgr.demo import run_demo
    from ssgr.errors import InputError

    with pytest.raises(InputError, match=message):
        run_demo(**{option: value})
    assert capsys.readouterr().out == ""  # refused before any output or work
