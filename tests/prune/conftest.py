"""Fixtures of the prune tests: tiny saved models and calibration files."""

from __future__ import annotations

import pytest
from _prune_helpers import random_calib, tiny_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_model("llama", tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    return random_calib(tmp_path_factory.mktemp("calib") / "calib.jsonl", [48, 130, 9, 64, 200])


@pytest.fixture(autouse=True, scope="session")
def _hash_cache(tmp_path_factory):
    """Keep the weight-hash cache of the resume fingerprint (ssgr.io.file_sha256) out of the
    user's ~/.cache; subprocesses inherit it."""
    import os

    old = os.environ.get("SSGR_HASH_CACHE")
    os.environ["SSGR_HASH_CACHE"] = str(tmp_path_factory.mktemp("hashcache") / "h.json")
    yield
    if old is None:
        os.environ.pop("SSGR_HASH_CACHE", None)
    else:
        os.environ["SSGR_HASH_CACHE"] = old
