"""Shared fixtures: seeds and devices.

Seeds are fixed by default, so a run is reproducible and a test cannot fail by the luck of a
draw: the ``seed`` fixture gives :data:`DEFAULT_SEEDS` (one seed). More seeds are opt-in:
``SSGR_TEST_SEEDS=1,2,3`` runs each seeded test once per listed seed, ``SSGR_TEST_SEEDS=random``
(or ``random:N``) with N fresh random seeds, printed so a failure can be replayed with
``SSGR_TEST_SEEDS=<seed>`` (``SSGR_TEST_SEED=<seed>``, one seed, is accepted too).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

#: The seeds every seeded test runs with unless ``SSGR_TEST_SEEDS`` says otherwise.
DEFAULT_SEEDS: tuple[int, ...] = (1234,)


def _seeds() -> tuple[int, ...]:
    spec = os.environ.get("SSGR_TEST_SEEDS", "").strip() or os.environ.get(
        "SSGR_TEST_SEED", ""
    ).strip()
    if not spec:
        return DEFAULT_SEEDS
    if spec.startswith("random"):
        count = int(spec.partition(":")[2] or 1)
        draw = random.SystemRandom()
        return tuple(draw.randrange(2**31) for _ in range(count))
    try:
        return tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise pytest.UsageError(
            f"SSGR_TEST_SEEDS={spec!r}: give integers separated by commas, or random[:N]"
        ) from None


SEEDS = _seeds()


def available_devices() -> list[str]:
    """Every device the tests can run on here: cpu always, cuda where present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames and len(SEEDS) > 1:
        metafunc.parametrize("seed", SEEDS, indirect=True, ids=[f"seed{s}" for s in SEEDS])


@pytest.fixture
def seed(request) -> int:
    """The test's seed (torch's global generator is seeded with it); printed on failure."""
    s = getattr(request, "param", SEEDS[0])
    torch.manual_seed(s)
    request.node.user_properties.append(("seed", s))
    print(f"seed={s} (replay with SSGR_TEST_SEEDS={s})")
    return s


@pytest.fixture(params=available_devices())
def device(request) -> str:
    return request.param


def pytest_report_header(config: pytest.Config) -> str:
    return f"ssgr seeds: {', '.join(map(str, SEEDS))} (SSGR_TEST_SEEDS to change)"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    if not torch.cuda.is_available():
        for item in items:
            # the marker itself: item.keywords also holds the names of the folders above the test
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip_gpu)
