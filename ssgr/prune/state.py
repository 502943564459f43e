"""Run state of a pruning run: the output directory, checkpoints and ``--resume``.

Resume state lives in ``DIR/.ssgr_state/``:

* ``state.json``: the fingerprint of everything that decides the output (:func:`fingerprint`:
  settings, model config and files, weight content, calibration content) and ``ckpt_layer``,
  the layer whose inputs are saved;
* ``acts/L<k>/rank<r>/``: those inputs, each rank's share in its own folder, one file per
  calibration sequence named by its global number (see :class:`RunState` and
  :meth:`ssgr.prune.store.ActivationStore.save_slot`), so a checkpoint written by N torchrun
  ranks resumes under any number of ranks or one process;
* ``reports.json``: the module records of the finished layers.

``config.json``, the shard index and ``prune_report.json`` are written only when every layer is
done, and the state folder is removed last (:meth:`RunState.finish`), so a directory of an
unfinished run never loads as a model or looks finished. The state folder appears by a rename of
a complete temporary folder and disappears by a rename before it is deleted; a later run removes
the temporaries a kill leaves (:func:`remove_leftovers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ssgr.io import file_sha256, foreign_files, foreign_files_message, write_json_atomic

from .config import NOT_NUMERIC, PruneConfig
from .errors import PruneError, writing
from .report import ModuleRecord
from .store import ActivationStore, load_raw, read_saved_slot

log = logging.getLogger(__name__)

STATE_DIR = ".ssgr_state"
REPORT = "prune_report.json"


#: Suffixes of weight files: hashed as ``weights``, not copied into the output.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")

#: Human names of the fingerprint's parts (for the refusal of a mismatching ``--resume``).
_PART_NAMES = {"model_config": "the model's config.json",
               "model_files": "the model's other files (tokenizer, generation config, index)",
               "calib": "the calibration file's content", "device": "the device type"}


def fingerprint(cfg: PruneConfig, src: Path, device: torch.device) -> dict:
    """What decides the written model, as a dict of parts (stored in ``state.json`` and in
    ``prune_report.json`` under ``"fingerprint"``; a ``--resume`` whose parts differ is refused,
    naming them):

    * ``settings``: every option outside :data:`NOT_NUMERIC` except the paths ``model`` and
      ``calib`` (their content counts instead);
    * ``model_config``: sha256 of ``config.json``; ``model_files``: sha256 over the name and
      sha256 of every other non-weight file of the model directory (tokenizer, generation
      config, shard index: copied into the output or used to tokenize ``"text"`` lines);
    * ``weights``: ``{file name: sha256 of its bytes}`` of every ``*.safetensors`` file (headers
      and tensor data), cached by :func:`ssgr.io.file_sha256` on path, inode, size and mtime, so
      an unchanged checkpoint is read once;
    * ``calib``: sha256 of the calibration file's bytes; ``device``: the device type.
    """
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in NOT_NUMERIC and k not in ("model", "calib")}
    files, weights = {}, {}
    cfg_file = src / "config.json"
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f == cfg_file:
            continue
        if f.name.endswith(".safetensors"):
            weights[f.name] = file_sha256(f, cache=True)
        elif not f.name.endswith(WEIGHT_SUFFIXES):
            files[f.name] = file_sha256(f)
    return {
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
        "model_config": file_sha256(cfg_file) if cfg_file.is_file() else None,
        "model_files": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        "weights": weights,
        "calib": file_sha256(cfg.calib),
        "device": device.type,
    }


def fingerprint_diff(old, new: dict) -> list[str]:
    """What differs between a saved fingerprint ``old`` and ``new`` (:func:`fingerprint`), in
    words; empty when they agree."""
    if not isinstance(old, dict):
        return ["the saved run has no comparable fingerprint (written by an older ssgr or by "
                "another program)"]
    out = []
    a, b = old.get("settings") or {}, new["settings"]
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"--{k.replace('_', '-')} ({a.get(k)!r} then, {b.get(k)!r} now)")
    wa, wb = old.get("weights") or {}, new["weights"]
    if wa != wb:
        changed = sorted(n for n in set(wa) | set(wb) if wa.get(n) != wb.get(n))
        out.append(f"the model's weights ({', '.join(changed[:4])})")
    for k, name in _PART_NAMES.items():
        if old.get(k) != new.get(k):
            out.append(name)
    return out


def _mismatch(out: Path, diffs: list[str]) -> PruneError:
    return PruneError(
        f"--resume: {out} was made by a different command (different arguments, calibration "
        f"data or model: {'; '.join(diffs)}); rerun the original command with --resume, or use "
        "--overwrite to start over"
    )


@dataclass
class OutPlan:
    """What :func:`prepare_out` found at ``--out``.

    out: the output directory; state: the saved ``state.json`` of a run to resume (None: start
    at layer 0); complete: ``--resume`` of a finished run (its report is ``out/REPORT``);
    remove: the existing directory must be emptied (``--overwrite``, only ssgr's own files:
    :func:`ssgr.io.remove_owned`) before the run writes.
    """

    out: Path
    state: dict | None = None
    complete: bool = False
    remove: bool = False


def prepare_out(cfg: PruneConfig, src: Path, fp: dict) -> OutPlan:
    """Check ``--out`` against ``--overwrite`` / ``--resume``; removes nothing.

    ``--resume`` of a finished run (``prune_report.json`` present: it is written before the
    state folder is removed) or of an interrupted one (``.ssgr_state/state.json``) is accepted
    only when the saved fingerprint equals ``fp``. A ``--resume`` that finds only ssgr's own
    files and no checkpoint (killed before the state folder appeared) starts from layer 0.

    Raises:
        PruneError when ``--out`` is a file or the source model, holds another run (its
        fingerprint differs: the message names what differs), holds files ssgr did not write
        (``--overwrite``), or an existing directory is given without ``--overwrite`` /
        ``--resume``.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PruneError(f"--out {out} exists and is not a directory; pick another path")
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise PruneError(f"--out {out} would overwrite the source model {src}; pick another path")
    state_file = out / STATE_DIR / "state.json"
    if out.exists() and any(out.iterdir()):
        if cfg.resume and (out / REPORT).is_file():
            rep = json.loads((out / REPORT).read_text())
            diffs = fingerprint_diff(rep.get("fingerprint"), fp)
            if diffs:
                raise _mismatch(out, diffs)
            return OutPlan(out, complete=True)
        if cfg.resume and state_file.is_file():
            state = json.loads(state_file.read_text())
            diffs = fingerprint_diff(state.get("fingerprint"), fp)
            if diffs:
                raise _mismatch(out, diffs)
            return OutPlan(out, state=state)
        foreign = foreign_files(out)
        if cfg.resume and not foreign:
            # only files of ours and no checkpoint (a run killed before its state folder
            # appeared): nothing to resume from, nothing to lose; start at layer 0
            log.warning("--resume: %s holds no checkpoint of a run (only ssgr's own files); "
                        "starting from layer 0", out)
            return OutPlan(out, remove=True)
        if cfg.resume:
            raise PruneError(f"--resume: {out} holds no resumable ssgr run (no {STATE_DIR}/"
                             "state.json); use --overwrite to replace it")
        if cfg.overwrite:
            if foreign:
                raise PruneError(foreign_files_message(out, foreign, "--overwrite"))
            return OutPlan(out, remove=True)
        raise PruneError(f"--out {out} already exists; pass --overwrite to replace it, --resume "
                         "to continue an interrupted run, or choose another directory")
    return OutPlan(out)


def remove_leftovers(out: Path, *, finished: bool) -> None:
    """Remove what a killed run left of the state folder: its temporaries
    (``.ssgr_state.tmp``, ``.ssgr_state.trash``) and, in a ``finished`` directory, the state
    folder itself (a kill during the final cleanup)."""
    names = [f"{STATE_DIR}.tmp", f"{STATE_DIR}.trash"] + ([STATE_DIR] if finished else [])
    for name in names:
        p = out / name
        if p.exists():
            log.warning("%s: removing %s left by an interrupted run", out, name)
            shutil.rmtree(p)


class RunState:
    """``DIR/.ssgr_state/`` of one run: ``state.json``, ``reports.json`` and the activation
    checkpoints ``acts/L<k>/rank<r>/``.

    A checkpoint of layer ``k`` (the inputs of layer ``k``) is one folder per rank,
    ``acts/L<k>/rank<r>/``, each written atomically by :meth:`save_part` with the rank's
    sequences under their *global* numbers in the calibration set (one process: ``rank0``
    with every sequence). It counts only once :meth:`commit` (rank 0, after every rank wrote
    its part: under torchrun the engine puts a collective error check in between) found every
    sequence in the parts and recorded ``ckpt_layer`` ``k`` in ``state.json`` (an atomic
    replace); a kill before that leaves the previous checkpoint the valid one. Because the
    files are keyed by global sequence number, not by rank, :meth:`restore` fills any split of
    the sequences: a run resumes under another world size (or one process) with the shares
    re-split by :func:`ssgr.prune.dist.split_by_tokens` for the new size.

    Args:
        out: the output directory.
        fp: the run's :func:`fingerprint` (parts; rank 0 only, ``{}`` on other ranks).
        layers, sequences: the run's decoder layer and calibration sequence counts (global).
        rank, world: this process's torchrun rank and the world size (0 and 1 without
            torchrun); ``world`` is recorded in ``state.json``.
    """

    def __init__(self, out: Path, fp: dict, layers: int, sequences: int, rank: int = 0,
                 world: int = 1) -> None:
        self.out = out
        self.dir = out / STATE_DIR
        self.fp = fp
        self.layers = layers
        self.sequences = sequences
        self.rank = rank
        self.world = world

    def start(self) -> None:
        """A fresh run: empty ``reports.json`` and ``ckpt_layer`` 0. The folder is built as
        ``.ssgr_state.tmp`` and renamed, so it appears complete (with ``state.json``) or not at
        all; a leftover state folder of ours is replaced."""
        tmp = self.out / f"{STATE_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        final, self.dir = self.dir, tmp
        try:
            self.save_records([])
            self.save(0)
        finally:
            self.dir = final
        if self.dir.exists():
            shutil.rmtree(self.dir)
        os.rename(tmp, self.dir)

    def save(self, ckpt_layer: int) -> None:
        """Write ``state.json``: the inputs of ``ckpt_layer`` are the saved ones."""
        with writing(self.dir / "state.json"):
            write_json_atomic(self.dir / "state.json", {
                "fingerprint": self.fp, "ckpt_layer": ckpt_layer, "layers": self.layers,
                "sequences": self.sequences, "world_size": self.world,
            }, default=str)

    def save_records(self, records: list[ModuleRecord]) -> None:
        """Write ``reports.json`` (the module records so far)."""
        with writing(self.dir / "reports.json"):
            write_json_atomic(self.dir / "reports.json", [asdict(r) for r in records],
                              default=str)

    def load_records(self, before: int) -> list[ModuleRecord]:
        """The saved module records of layers ``< before``."""
        recs = [ModuleRecord(**r) for r in json.loads((self.dir / "reports.json").read_text())]
        return [r for r in recs if r.layer < before]

    def due(self, li: int, every: int) -> bool:
        """Whether the inputs of layer ``li + 1`` are checkpointed after layer ``li`` (every
        ``every`` layers; never after the last one, which needs no inputs)."""
        return bool(every) and ((li + 1) % every == 0 or li + 1 == self.layers) \
            and li + 1 < self.layers

    def _layer_dir(self, layer: int) -> Path:
        return self.dir / "acts" / f"L{layer}"

    def save_part(self, store: ActivationStore, slot: str, layer: int,
                  index: list[int]) -> None:
        """Save this rank's part of the inputs of ``layer``: sequences ``0..len(index)-1`` of
        ``slot``, which are the global sequences ``index``, to ``acts/L<layer>/rank<r>/``
        (atomically; an empty part for a rank without sequences)."""
        store.save_slot(slot, self._layer_dir(layer) / f"rank{self.rank}", len(index), index)

    def commit(self, layer: int) -> bool:
        """Record the checkpoint of ``layer`` (rank 0, once every rank's :meth:`save_part`
        returned): when the parts hold every sequence, write ``state.json`` and remove older
        checkpoints; returns whether it did. A part missing (a rank whose ``--out`` is not on
        a filesystem rank 0 sees) keeps the previous checkpoint, with a WARNING."""
        missing = set(range(self.sequences)) - set(self._saved(layer))
        if missing:
            log.warning("%s: the checkpoint of layer %d lacks %d of %d sequences (the ranks "
                        "do not share --out's filesystem?); --resume continues from the "
                        "previous checkpoint", self._layer_dir(layer), layer, len(missing),
                        self.sequences)
            return False
        self.save(layer)
        self.drop_others(keep=layer, newer=False)
        return True

    def drop_others(self, keep: int, newer: bool = True) -> None:
        """Remove the checkpoint folders of other layers than ``keep``: the older ones, and
        with ``newer`` the newer ones too (incomplete: written before a kill, never recorded),
        with their temporaries."""
        acts = self.dir / "acts"
        if not acts.is_dir():
            return
        for old in acts.iterdir():
            try:
                k = int(old.name.removeprefix("L").removesuffix(".tmp"))
            except ValueError:
                continue
            if k < keep or (newer and k > keep) or (k == keep and old.name.endswith(".tmp")):
                shutil.rmtree(old, ignore_errors=True)

    def _saved(self, layer: int) -> dict[int, tuple[Path, tuple[int, ...], torch.dtype]]:
        """Global sequence number -> (file, shape, dtype) over every rank's part of ``layer``."""
        found: dict[int, tuple[Path, tuple[int, ...], torch.dtype]] = {}
        folder = self._layer_dir(layer)
        parts = sorted(p for p in folder.glob("rank*") if p.is_dir()
                       and not p.name.endswith(".tmp")) if folder.is_dir() else []
        parts.append(folder)  # the one-folder layout of ssgr before per-rank parts
        for part in parts:
            if not (part / "meta.json").is_file():
                continue
            for g, path, shape, dtype in read_saved_slot(part):
                found.setdefault(g, (path, shape, dtype))
        return found

    def checkpoint(self, store: ActivationStore, slot: str, layer: int) -> None:
        """One process: save ``slot`` (the inputs of ``layer``, every sequence) as the part of
        rank 0, then :meth:`commit` it (a kill at any point leaves one complete
        checkpoint)."""
        self.save_part(store, slot, layer, list(range(self.sequences)))
        self.commit(layer)

    def restore(self, store: ActivationStore, slot: str, layer: int, index: list[int],
                tokens: list[int]) -> None:
        """Load the checkpointed inputs of ``layer`` into ``slot``: sequence ``i`` of the
        store is global sequence ``index[i]``, of ``tokens[i]`` tokens. A torchrun rank
        without sequences (``index`` empty, one ``tokens`` entry) gets the first
        ``tokens[0]`` positions of sequence 0 for its probe (a causal model's hidden states
        at those positions do not depend on the later tokens).

        Raises:
            PruneError when the checkpoint lacks sequences or a sequence's token count differs
            (naming the folder; the fix: ``--overwrite``).
        """
        saved = self._saved(layer)
        missing = sorted(set(range(self.sequences)) - set(saved))
        if missing:
            raise PruneError(f"{self._layer_dir(layer)}: the checkpoint lacks {len(missing)} "
                             f"of {self.sequences} sequences (first: {missing[0]}); use "
                             "--overwrite to start over")
        probe = not index
        for i, t in enumerate(tokens):
            path, shape, dtype = saved[0 if probe else index[i]]
            if shape[-2] < t or (shape[-2] != t and not probe):
                raise PruneError(f"{path}: {shape[-2]} tokens saved for calibration sequence "
                                 f"{index[i] if index else 0}, which has {t}; use --overwrite "
                                 "to start over")
            store.put(slot, i, load_raw(path, shape, dtype)[..., :t, :])

    def finish(self, report: dict) -> None:
        """Write ``DIR/prune_report.json``, then remove the state folder: renamed to
        ``.ssgr_state.trash`` first (one atomic step), then deleted. A kill in between leaves a
        finished directory whose leftovers the next ``--resume`` removes
        (:func:`remove_leftovers`)."""
        with writing(self.out / REPORT):
            write_json_atomic(self.out / REPORT, report, default=str)
        trash = self.out / f"{STATE_DIR}.trash"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(self.dir, trash)
        shutil.rmtree(trash)
