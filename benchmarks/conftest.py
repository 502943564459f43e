"""Benchmark fixtures and switches: the machine description stored in the results JSON, the
``sync`` fixture, and the smoke switch (``SSGR_BENCH_SMOKE=1`` or ``--bench-smoke``: tiny shapes
and one round, see ``shapes.py``; recorded as ``machine_info["ssgr"]["smoke"]``)."""

from __future__ import annotations

import os

import pytest
import torch

from ssgr.info import cpu_name

SMOKE_ENV = "SSGR_BENCH_SMOKE"


def _smoke() -> bool:
    return os.environ.get(SMOKE_ENV, "").strip() not in ("", "0")


def machine_info() -> dict:
    info = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "smoke": _smoke(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-smoke", action="store_true", default=False,
        help=f"tiny shapes and one round (same as {SMOKE_ENV}=1): checks that every benchmark "
        "runs, measures nothing",
    )


def pytest_configure(config: pytest.Config) -> None:
    # shapes.py reads the switch when the bench modules are collected, after this hook
    if config.getoption("--bench-smoke"):
        os.environ[SMOKE_ENV] = "1"


def pytest_report_header(config: pytest.Config) -> str | None:
    return f"ssgr benchmarks: SMOKE shapes ({SMOKE_ENV}=1)" if _smoke() else None


def pytest_benchmark_update_machine_info(config, machine_info):  # noqa: F811
    machine_info["ssgr"] = globals()["machine_info"]()


@pytest.fixture
def sync():
    """Call inside a timed function so GPU work is counted (no-op on CPU)."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
