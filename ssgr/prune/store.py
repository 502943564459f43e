"""Activation store: per-sequence hidden states of variable length, kept in named slots.

Three kinds hold the same bytes: ``device`` (tensors on the compute device), ``cpu`` (CPU tensors,
pinned when CUDA is available so copies to the GPU are asynchronous) and ``disk`` (one raw file per
sequence and slot, read back memory-mapped). :func:`choose_store` implements ``--offload auto``.
A slot is one role in the layer pass (``in``: the residual stream entering the layer, ``out``: the
next layer's input, ``cache``: a cached sub-module input); :meth:`ActivationStore.swap` renames
``out`` to ``in`` between layers without copying.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import PruneError, writing

log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_bytes(text: str | int) -> int:
    """``"8GiB"`` / ``"512MB"`` / ``"1.5G"`` / ``1024`` -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise PruneError(f"bad memory size {text!r}; write it like 8GiB, 512MB or 1.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_bytes(n: float) -> str:
    """Human-readable binary size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def save_raw(t: torch.Tensor, path: Path) -> None:
    """Write a tensor's bytes to ``path`` (through a temporary name, so a kill leaves no torn
    file under the final name)."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tofile(tmp)
        os.replace(tmp, path)


def load_raw(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Memory-map a file written by :func:`save_raw` (copy-on-write, the file is never changed)."""
    arr = np.memmap(path, dtype=np.uint8, mode="c")
    return torch.from_numpy(arr).view(dtype).reshape(shape)


def read_saved_slot(folder: Path) -> list[tuple[int, Path, tuple[int, ...], torch.dtype]]:
    """``(global number, file, shape, dtype)`` of every sequence of a folder written by
    :meth:`ActivationStore.save_slot` (memory-map a file with :func:`load_raw`).

    Raises:
        PruneError when ``meta.json`` is missing or unreadable (naming the folder).
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if isinstance(meta, list):  # written before the numbers were saved: 0..n-1
            meta = {"index": list(range(len(meta))), "tensors": meta}
        return [(int(g), folder / f"{g}.bin", tuple(m["shape"]), _DTYPES[m["dtype"]])
                for g, m in zip(meta["index"], meta["tensors"], strict=True)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PruneError(f"{folder}: not a complete activation checkpoint ({exc}); use "
                         "--overwrite to start over") from None


class ActivationStore:
    """``put(slot, i, x)`` / ``get(slot, i)`` for sequence ``i``'s activations ``x[1, t, d]``.

    Args:
        kind: ``device``, ``cpu`` or ``disk``.
        device: the compute device (``get`` returns tensors there).
        root: folder for ``disk`` files (created; removed by :meth:`close`).
    """

    def __init__(self, kind: str, device: torch.device, root: Path | None = None) -> None:
        if kind not in ("device", "cpu", "disk"):
            raise PruneError(f"unknown activation store kind {kind!r}; use device, cpu or disk")
        if kind == "disk" and root is None:
            raise PruneError("a disk activation store needs a folder")
        self.kind = kind
        self.device = torch.device(device)
        self.root = Path(root) if root is not None else None
        self.pin = kind == "cpu" and self.device.type == "cuda" and torch.cuda.is_available()
        self._mem: dict[str, dict[int, torch.Tensor]] = {}
        self._meta: dict[str, dict[int, tuple[tuple[int, ...], torch.dtype]]] = {}
        self._dirs: dict[str, Path] = {}
        self.bytes = 0
        self.peak_bytes = 0
        if self.kind == "disk":
            self.root.mkdir(parents=True, exist_ok=True)

    def _slot_dir(self, slot: str) -> Path:
        if slot not in self._dirs:
            n = len(self._dirs)
            d = self.root / f"slot{n}_{slot}"
            d.mkdir(parents=True, exist_ok=True)
            self._dirs[slot] = d
        return self._dirs[slot]

    def put(self, slot: str, i: int, x: torch.Tensor) -> None:
        """Store ``x`` (any shape) as sequence ``i`` of ``slot``, replacing what was there."""
        self.delete(slot, i)
        nbytes = x.numel() * x.element_size()
        if self.kind == "disk":
            save_raw(x, self._slot_dir(slot) / f"{i}.bin")
            self._meta.setdefault(slot, {})[i] = (tuple(x.shape), x.dtype)
        else:
            if self.kind == "device":
                t = x.detach().to(self.device, copy=x.device == self.device)
            else:
                t = torch.empty(x.shape, dtype=x.dtype, pin_memory=self.pin)
                t.copy_(x.detach(), non_blocking=self.pin)
            self._mem.setdefault(slot, {})[i] = t
        self.bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def get(self, slot: str, i: int) -> torch.Tensor:
        """Sequence ``i`` of ``slot`` on the compute device."""
        if self.kind == "disk":
            try:
                shape, dtype = self._meta[slot][i]
            except KeyError:
                raise KeyError(f"activation store has no sequence {i} in slot {slot!r}") from None
            return load_raw(self._dirs[slot] / f"{i}.bin", shape, dtype).to(self.device)
        try:
            t = self._mem[slot][i]
        except KeyError:
            raise KeyError(f"activation store has no sequence {i} in slot {slot!r}") from None
        if t.device != self.device:
            if self.pin:
                torch.cuda.synchronize(self.device)  # the pinned copy-in may still be running
            return t.to(self.device, non_blocking=self.pin)
        return t

    def delete(self, slot: str, i: int) -> None:
        if self.kind == "disk":
            meta = self._meta.get(slot, {}).pop(i, None)
            if meta is not None:
                self.bytes -= int(np.prod(meta[0])) * torch.empty((), dtype=meta[1]).element_size()
                (self._dirs[slot] / f"{i}.bin").unlink(missing_ok=True)
            return
        t = self._mem.get(slot, {}).pop(i, None)
        if t is not None:
            self.bytes -= t.numel() * t.element_size()

    def clear(self, slot: str) -> None:
        """Drop every sequence of ``slot``."""
        keys = list((self._meta if self.kind == "disk" else self._mem).get(slot, {}))
        for i in keys:
            self.delete(slot, i)

    def swap(self, a: str, b: str) -> None:
        """Exchange the contents of slots ``a`` and ``b`` (no data is copied)."""
        for d in (self._mem, self._meta, self._dirs):
            va, vb = d.pop(a, None), d.pop(b, None)
            if vb is not None:
                d[a] = vb
            if va is not None:
                d[b] = va

    def save_slot(self, slot: str, folder: Path, count: int,
                  index: list[int] | None = None) -> None:
        """Write sequences ``0..count-1`` of ``slot`` to ``folder``, atomically: the folder
        appears complete or not at all.

        Sequence ``i`` goes to ``<index[i]>.bin`` (raw bytes); ``meta.json`` holds ``{"index":
        [...], "tensors": [{"shape", "dtype"}, ...]}``. ``index`` (default ``0..count-1``) is
        the global number of each sequence, so a torchrun rank's share (its sequences are
        numbered from 0 in its store) is saved under the numbers of the whole calibration set.
        """
        index = list(range(count)) if index is None else list(index)
        if len(index) != count:
            raise PruneError(f"save_slot: {count} sequences but {len(index)} numbers")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = []
        for i, g in enumerate(index):
            if self.kind == "disk":
                shape, dtype = self._meta[slot][i]
                with writing(tmp / f"{g}.bin"):
                    shutil.copyfile(self._dirs[slot] / f"{i}.bin", tmp / f"{g}.bin")
            else:
                t = self._mem[slot][i]
                shape, dtype = tuple(t.shape), t.dtype
                save_raw(t, tmp / f"{g}.bin")
            tensors.append({"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")})
        with writing(tmp / "meta.json"):
            (tmp / "meta.json").write_text(json.dumps({"index": index, "tensors": tensors}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def load_slot(self, slot: str, folder: Path) -> int:
        """Fill ``slot`` from a folder written by :meth:`save_slot`, its sequences numbered
        ``0..n-1`` in the saved order; returns ``n``."""
        saved = read_saved_slot(folder)
        for i, (_, path, shape, dtype) in enumerate(saved):
            self.put(slot, i, load_raw(path, shape, dtype))
        return len(saved)

    def close(self) -> None:
        """Release memory and remove disk files."""
        self._mem.clear()
        self._meta.clear()
        if self.kind == "disk" and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.bytes = 0


def proc_kib_field(path: str, key: str) -> int | None:
    """The ``key:`` line of a /proc file given in kB (``/proc/meminfo``, ``/proc/self/status``),
    in bytes; None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (bytes); a large number where it cannot be read."""
    avail = proc_kib_field("/proc/meminfo", "MemAvailable")
    return (1 << 50) if avail is None else avail


def choose_store(
    offload: str, device: torch.device, need_bytes: int, budget_bytes: int, reserve_bytes: int = 0
) -> tuple[str, str]:
    """Pick the store kind for ``--offload``; returns ``(kind, reason)``.

    ``auto``: ``device`` when the estimate fits in ``--max-activation-memory`` and in the device's
    free memory less ``reserve_bytes`` (one layer and its Hessians); else ``cpu`` when it fits in
    half of the available RAM; else ``disk``. On a CPU compute device ``device`` and ``cpu`` are the
    same memory, so the choice is ``device`` or ``disk``.
    """
    if offload in ("device", "cpu", "disk"):
        return offload, "forced by --offload"
    if offload != "auto":
        raise PruneError(f"--offload must be auto, device, cpu or disk, got {offload!r}")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need_bytes <= budget_bytes and need_bytes <= free - reserve_bytes:
            return "device", f"{fmt_bytes(need_bytes)} fits the budget and free GPU memory"
        if need_bytes <= available_ram() // 2:
            return "cpu", f"{fmt_bytes(need_bytes)} exceeds the GPU budget; fits in RAM"
        return "disk", f"{fmt_bytes(need_bytes)} exceeds the GPU budget and half the RAM"
    if need_bytes <= budget_bytes and need_bytes <= available_ram() // 2:
        return "device", f"{fmt_bytes(need_bytes)} fits --max-activation-memory and RAM"
    return "disk", f"{fmt_bytes(need_bytes)} exceeds --max-activation-memory or half the RAM"
