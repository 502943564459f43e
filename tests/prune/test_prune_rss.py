"""The report's peak RSS is the process's own: a child started from a big parent does not report
the parent's peak (``ru_maxrss`` carries it over fork + exec on Linux; ``VmHWM`` does not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssgr.prune.report import peak_rss_bytes


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_child_peak_rss_is_its_own():
    big = torch.ones(256 << 20)  # 1 GiB, touched
    parent = peak_rss_bytes()
    code = "from ssgr.prune.report import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True, timeout=300).stdout)
    del big
    assert parent >= 1 << 30
    assert 0 < child < parent - (512 << 20)
