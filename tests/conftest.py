"""Shared fixtures: fresh seeds (logged, reproducible with SSGR_TEST_SEED) and devices."""

from __future__ import annotations

import os
import random

import pytest
import torch


def available_devices() -> list[str]:
    """Every device the tests can run on here: cpu always, cuda where present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def seed(request) -> int:
    """A fresh random seed per test (set SSGR_TEST_SEED to replay one); printed on failure."""
    s = int(os.environ.get("SSGR_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(s)
    request.node.user_properties.append(("seed", s))
    print(f"seed={s} (replay with SSGR_TEST_SEED={s})")
    return s


@pytest.fixture(params=available_devices())
def device(request) -> str:
    return request.param


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
