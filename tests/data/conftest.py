"""Fixtures for the ssgr.data tests: a tiny random-init chat model saved locally."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer Qwen2 (hidden 32) + char tokenizer whose EOS is boosted (mix of
    stop/length)."""
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-model"), seed=0, eos_boost=8.0)


@pytest.fixture()
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
    spinning makes them far slower; use one thread for the test and restore the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
