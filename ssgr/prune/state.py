"""Run state of a pruning run: the output directory, checkpoints and ``--resume``.

Resume state lives in ``DIR/.ssgr_state/``:

* ``state.json``: the fingerprint of the numerics-relevant arguments, calibration file and
  checkpoint (:func:`fingerprint`), and ``ckpt_layer``, the layer whose inputs are saved;
* ``acts/L<k>/``: those inputs (one file per calibration sequence, see
  :meth:`ssgr.prune.store.ActivationStore.save_slot`);
* ``reports.json``: the module records of the finished layers.

``config.json``, the shard index and ``prune_report.json`` are written only when every layer is
done, and the state folder is removed last (:meth:`RunState.finish`), so a directory of an
unfinished run never loads as a model or looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ssgr.io import write_json_atomic

from .calib import file_sha256
from .config import NOT_NUMERIC, PruneConfig
from .errors import PruneError
from .report import ModuleRecord
from .store import ActivationStore

log = logging.getLogger(__name__)

STATE_DIR = ".ssgr_state"
REPORT = "prune_report.json"


def fingerprint(cfg: PruneConfig, src: Path, device: torch.device) -> str:
    """Hex sha256 over what decides the weights: the options outside :data:`NOT_NUMERIC`, the
    model directory, the calibration file's bytes, the device type and the shards' names and
    sizes. A ``--resume`` with another fingerprint is refused."""
    d = {k: v for k, v in asdict(cfg).items() if k not in NOT_NUMERIC}
    d["model"] = str(src.resolve())
    d["calib"] = file_sha256(cfg.calib)
    d["device"] = device.type
    d["weights"] = sorted((f.name, f.stat().st_size) for f in src.glob("*.safetensors"))
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class OutPlan:
    """What :func:`prepare_out` found at ``--out``.

    out: the output directory; state: the saved ``state.json`` of a run to resume (None: start
    at layer 0); complete: ``--resume`` of a finished run (its report is ``out/REPORT``);
    remove: the existing directory must be removed (``--overwrite``) before the run writes.
    """

    out: Path
    state: dict | None = None
    complete: bool = False
    remove: bool = False


def prepare_out(cfg: PruneConfig, src: Path, fp: str) -> OutPlan:
    """Check ``--out`` against ``--overwrite`` / ``--resume``; removes nothing.

    Raises:
        PruneError when ``--out`` is a file or the source model, holds another run (fingerprint
        differs) or an existing directory is given without ``--overwrite`` / ``--resume``.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PruneError(f"--out {out} exists and is not a directory; pick another path")
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise PruneError(f"--out {out} would overwrite the source model {src}; pick another path")
    state_file = out / STATE_DIR / "state.json"
    if out.exists() and any(out.iterdir()):
        if cfg.resume and state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("fingerprint") != fp:
                raise PruneError(
                    f"--resume: {out} was started with different arguments, calibration data or "
                    "model (the fingerprint differs); rerun the original command with --resume, "
                    "or use --overwrite to start over"
                )
            return OutPlan(out, state=state)
        if cfg.resume and (out / REPORT).is_file():
            return OutPlan(out, complete=True)
        if cfg.overwrite:
            return OutPlan(out, remove=True)
        if cfg.resume:
            raise PruneError(f"--resume: {out} holds no resumable ssgr run (no {STATE_DIR}/"
                             "state.json); use --overwrite to replace it")
        raise PruneError(f"--out {out} already exists; pass --overwrite to replace it, --resume "
                         "to continue an interrupted run, or choose another directory")
    return OutPlan(out)


class RunState:
    """``DIR/.ssgr_state/`` of one run: ``state.json``, ``reports.json`` and the activation
    checkpoints ``acts/L<k>/``.

    Args:
        out: the output directory.
        fp: the run's :func:`fingerprint`.
        layers, sequences: the run's decoder layer and calibration sequence counts.
    """

    def __init__(self, out: Path, fp: str, layers: int, sequences: int) -> None:
        self.out = out
        self.dir = out / STATE_DIR
        self.fp = fp
        self.layers = layers
        self.sequences = sequences

    def start(self) -> None:
        """A fresh run: empty ``reports.json`` and ``ckpt_layer`` 0."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.save_records([])
        self.save(0)

    def save(self, ckpt_layer: int) -> None:
        """Write ``state.json``: the inputs of ``ckpt_layer`` are the saved ones."""
        write_json_atomic(self.dir / "state.json", {
            "fingerprint": self.fp, "ckpt_layer": ckpt_layer, "layers": self.layers,
            "sequences": self.sequences,
        }, default=str)

    def save_records(self, records: list[ModuleRecord]) -> None:
        """Write ``reports.json`` (the module records so far)."""
        write_json_atomic(self.dir / "reports.json", [asdict(r) for r in records], default=str)

    def load_records(self, before: int) -> list[ModuleRecord]:
        """The saved module records of layers ``< before``."""
        recs = [ModuleRecord(**r) for r in json.loads((self.dir / "reports.json").read_text())]
        return [r for r in recs if r.layer < before]

    def due(self, li: int, every: int) -> bool:
        """Whether the inputs of layer ``li + 1`` are checkpointed after layer ``li`` (every
        ``every`` layers; never after the last one, which needs no inputs)."""
        return bool(every) and ((li + 1) % every == 0 or li + 1 == self.layers) \
            and li + 1 < self.layers

    def checkpoint(self, store: ActivationStore, slot: str, layer: int) -> None:
        """Save ``slot`` (the inputs of ``layer``) to ``acts/L<layer>/``, then ``state.json``,
        then remove older checkpoints (a kill at any point leaves one complete checkpoint)."""
        store.save_slot(slot, self.dir / "acts" / f"L{layer}", self.sequences)
        self.save(layer)
        for old in (self.dir / "acts").glob("L*"):
            if old.name != f"L{layer}":
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, store: ActivationStore, slot: str, layer: int) -> None:
        """Load the checkpointed inputs of ``layer`` into ``slot``.

        Raises:
            PruneError when the checkpoint holds another number of sequences.
        """
        n = store.load_slot(slot, self.dir / "acts" / f"L{layer}")
        if n != self.sequences:
            raise PruneError(f"{self.dir}: checkpoint holds {n} sequences, expected "
                             f"{self.sequences}; use --overwrite to start over")

    def finish(self, report: dict) -> None:
        """Write ``DIR/prune_report.json``, then remove the state folder (last)."""
        write_json_atomic(self.out / REPORT, report, default=str)
        shutil.rmtree(self.dir, ignore_errors=True)
