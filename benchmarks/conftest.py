"""Benchmark fixtures: machine description stored in the results JSON."""

from __future__ import annotations

import platform

import pytest
import torch


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def pytest_benchmark_update_machine_info(config, machine_info):  # noqa: F811
    machine_info["ssgr"] = globals()["machine_info"]()


@pytest.fixture
def sync():
    """Call inside a timed function so GPU work is counted (no-op on CPU)."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
