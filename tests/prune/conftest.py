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
