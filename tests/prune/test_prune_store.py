"""Activation store kinds, sizes and the --offload auto choice."""

from __future__ import annotations

import pytest
import torch

from ssgr.prune.errors import PruneError
from ssgr.prune.store import ActivationStore, choose_store, parse_bytes


@pytest.mark.parametrize("kind", ["device", "cpu", "disk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_roundtrip(tmp_path, kind, dtype):
    s = ActivationStore(kind, torch.device("cpu"), tmp_path / "st")
    xs = [torch.randn(1, n, 8).to(dtype) for n in (5, 1, 33)]
    for i, x in enumerate(xs):
        s.put("in", i, x)
    assert s.bytes == sum(x.numel() * x.element_size() for x in xs)
    s.put("out", 0, xs[2])
    s.swap("in", "out")
    assert torch.equal(s.get("out", 1), xs[1]) and torch.equal(s.get("in", 0), xs[2])
    s.save_slot("out", tmp_path / "ck", 3)
    s.clear("out")
    with pytest.raises(KeyError):
        s.get("out", 0)
    assert s.load_slot("out", tmp_path / "ck") == 3
    for i, x in enumerate(xs):
        got = s.get("out", i)
        assert got.dtype == dtype and torch.equal(got, x)
    s.close()
    assert s.bytes == 0
    if kind == "disk":
        assert not (tmp_path / "st").exists()


def test_parse_bytes_and_auto_choice():
    assert parse_bytes("8GiB") == 8 * 1024**3 and parse_bytes("1.5G") == 1_500_000_000
    assert parse_bytes("512MB") == 512_000_000 and parse_bytes(77) == 77
    with pytest.raises(PruneError, match="8GiB"):
        parse_bytes("lots")
    cpu = torch.device("cpu")
    assert choose_store("auto", cpu, 1000, parse_bytes("1MiB"))[0] == "device"
    assert choose_store("auto", cpu, 10**7, parse_bytes("1MiB"))[0] == "disk"
    assert choose_store("cpu", cpu, 10**12, 1) == ("cpu", "forced by --offload")
    with pytest.raises(PruneError):
        choose_store("ram", cpu, 1, 1)
