"""``ssgr generate`` under torchrun: the problems sharded over the ranks, one part file each,
merged into one TRACES.jsonl in problem order.

Started by ``torchrun --nproc-per-node N -m ssgr generate ...`` (``RANK`` and ``WORLD_SIZE`` in
the environment, ``WORLD_SIZE`` > 1), :func:`generate_sharded` gives rank ``r`` the problems
``r, r + N, r + 2N, ...`` of the selected list (after ``--split`` and ``--limit``) and runs
:func:`ssgr.data.generate.generate` on them into its own part file ``OUT.rank<r>-of-<N>.part``
(append-only, resumable like any traces file, with its own ``.meta.json`` and lock). Then the
ranks meet at one barrier (``torch.distributed`` with the gloo backend, ``--dist-timeout``
seconds; nothing else goes through torch.distributed) and rank 0 merges: the lines already in
OUT stay first, as they were, then every new sample in problem order (sample index within a
problem), each (problem, sample) exactly once; the merged file is written next to OUT by
:func:`ssgr.io.write_jsonl_atomic`, checked by a ``generate()`` call on it with the whole problem
list (which validates the run settings against OUT's ``.meta.json`` and writes the merged one),
then renamed over OUT; the part files are removed last.

Resumable at every point: a killed rank's part file resumes (its complete lines are kept); the
lines of OUT, and of part files left by a run with another number of ranks, are copied into the
part of the rank that now owns their problem before it generates, so nothing is generated twice;
a kill during the merge leaves OUT as it was (or merged, with part files whose lines are all in
it); a rerun once every sample is in OUT generates and writes nothing on any rank (no process
group is even started; rank 0 checks the settings as a plain rerun does). The settings are
checked against OUT's before generating when OUT already holds complete problems of this run,
else on the merged file before it replaces OUT.

Logging: INFO from rank 0 only; WARNING and ERROR from every rank, prefixed with ``[rank r/N]``
(:func:`ssgr._torchrun.rank_logging`, shared with ``ssgr prune``); the progress bar on rank 0
only. With a CUDA device and no ``--device``, rank
``r`` generates on ``cuda:LOCAL_RANK``.

This is the data-parallel pattern of ``torchrun`` jobs in general (one process per device, a
shard of the data each, one writer); the ``vllm`` generator is refused here: give it
``--data-parallel-size`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ssgr._torchrun import process_group, rank_logging, torchrun_env
from ssgr.data.errors import DataError, GenerationError
from ssgr.data.generate import GenerateStats, generate, meta_path
from ssgr.data.problems import Problem, select_problems
from ssgr.data.traces import repair_partial_tail
from ssgr.io import write_jsonl_atomic, write_text_atomic

logger = logging.getLogger(__name__)

Key = tuple[str, int]


def dist_env() -> tuple[int, int] | None:
    """``(rank, world_size)`` from the torchrun environment (``RANK``, ``WORLD_SIZE``:
    :func:`ssgr._torchrun.torchrun_env`), or None when not started by torchrun or with one
    process.

    Raises :class:`~ssgr.data.errors.DataError` for values that are not integers or a rank
    outside ``[0, WORLD_SIZE)``.
    """
    env = torchrun_env("generate", error=DataError)
    return (env.rank, env.world_size) if env is not None and env.world_size > 1 else None


def part_path(out: str | os.PathLike[str], rank: int | str, world_size: int) -> Path:
    """The part file of one rank: ``OUT.rank<r>-of-<N>.part`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}-of-{world_size}.part")


def part_files(out: str | os.PathLike[str]) -> list[Path]:
    """Every part file of ``out`` on disk (any number of ranks), sorted by name."""
    out = Path(out)
    pat = re.compile(re.escape(out.name) + r"\.rank\d+-of-\d+\.part")
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if pat.fullmatch(p.name) and p.is_file())


def shard_problems(problems: Sequence[Problem], rank: int, world_size: int) -> list[Problem]:
    """Rank ``rank``'s problems: every ``world_size``-th from index ``rank`` (round robin, so
    the shards hold near-equal shares of easy and hard problems)."""
    return list(problems[rank::world_size])


def _complete_lines(path: Path) -> Iterator[tuple[int, int, int, Key]]:
    """``(line number, byte offset, byte length, (problem_id, sample))`` of every complete
    (newline-terminated) line of a traces file; a partial last line is skipped. Raises
    :class:`DataError` naming the file and line for a complete line that is not a trace."""
    if not path.exists():
        return
    with path.open("rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return
            if raw.strip():
                try:
                    obj = json.loads(raw)
                    key = (str(obj["problem_id"]), int(obj["sample"]))
                except (ValueError, KeyError, TypeError):
                    raise DataError(
                        f"{path}:{lineno}: not a traces line (problem_id and sample needed); "
                        "fix or remove that line"
                    ) from None
                yield lineno, offset, len(raw), key
            offset += len(raw)


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _seed_part(part: Path, out: Path, others: Sequence[Path], mine: set[Key]) -> int:
    """Append to ``part`` the complete lines of ``out`` and of ``others`` (stale part files)
    whose (problem, sample) is in ``mine`` and not yet in ``part``; copy OUT's run settings as
    the part's when the part is new. Returns the lines copied."""
    repair_partial_tail(part)  # a killed rank's torn last line, before appending
    have = {k for *_, k in _complete_lines(part)}
    copied = 0
    new_part = not have
    with contextlib.ExitStack() as stack:
        f = None
        for src in (out, *others):
            for _, off, ln, key in _complete_lines(src):
                if key in mine and key not in have:
                    if f is None:
                        f = stack.enter_context(part.open("ab"))
                    f.write(_read_at(src, off, ln))
                    have.add(key)
                    copied += 1
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
    if copied and new_part and meta_path(out).exists() and not meta_path(part).exists():
        write_text_atomic(meta_path(part), meta_path(out).read_text(encoding="utf-8"))
    return copied


def _rank_device(device: str | None) -> str | None:
    """``cuda:LOCAL_RANK`` when no device is given and CUDA is present, else ``device``."""
    if device is not None:
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def generate_sharded(
    model: str,
    problems: str | os.PathLike[str] | list[Problem],
    out: str | os.PathLike[str],
    *,
    rank: int,
    world_size: int,
    n: int = 16,
    split: str = "all",
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    limit: int | None = None,
    generator: str = "hf",
    device: str | None = None,
    progress: bool = True,
    dist_timeout: float = 7200.0,
    **kwargs: Any,
) -> GenerateStats:
    """Rank ``rank`` of ``world_size``'s share of ``ssgr generate`` (see the module docstring).

    The arguments are those of :func:`ssgr.data.generate.generate` (``kwargs`` are passed on)
    plus the rank, the world size and ``dist_timeout``: the seconds a rank waits at the barrier
    before the merge for the others (they may still be generating: give the slowest shard's
    time). Returns rank 0's stats for the whole file (``written`` counts the samples merged
    into OUT by this run) or another rank's stats for its own part.

    Raises :class:`~ssgr.data.errors.DataError` for bad input (as ``generate``, and for
    ``generator="vllm"``) and :class:`~ssgr.data.errors.GenerationError` when generation fails
    or the ranks do not all reach the merge within ``dist_timeout`` seconds.
    """
    if generator == "vllm":
        raise DataError(
            "--generator vllm under torchrun is not supported: start one process and give vLLM "
            "its devices with --tensor-parallel-size / --data-parallel-size"
        )
    if not dist_timeout > 0:
        raise DataError(f"--dist-timeout must be > 0 seconds, got {dist_timeout}")
    t0 = time.perf_counter()
    gen_kw = dict(kwargs, n=n, generator=generator)
    out = Path(out)
    with rank_logging(rank, world_size):
        probs = select_problems(problems, split, heldout_fraction, split_seed, limit)
        wanted = {(p.id, s) for p in probs for s in range(n)}
        in_out = {k for *_, k in _complete_lines(out)}
        if wanted <= in_out:
            logger.info("%s: all %d samples already done; nothing to do", out, len(wanted))
            if rank == 0:  # the settings check of a plain rerun (nothing is generated)
                generate(model, problems, out, split=split, heldout_fraction=heldout_fraction,
                         split_seed=split_seed, limit=limit, device=device, progress=False,
                         **gen_kw)
                _remove_merged_parts(out, in_out)
            return GenerateStats(len(probs), len(wanted), len(wanted), 0, 0, 0, 0,
                                 time.perf_counter() - t0)
        mine = shard_problems(probs, rank, world_size)
        part = part_path(out, rank, world_size)
        logger.info("%d problems sharded over %d ranks (up to %d each), part files %s",
                    len(probs), world_size, -(-len(probs) // world_size),
                    part_path(out, "<r>", world_size).name)
        if rank == 0 and in_out:
            _check_settings(model, probs, in_out, out, n, gen_kw)
        st = GenerateStats(len(mine), len(mine) * n, 0, 0, 0, 0, 0, 0.0)
        if mine:
            others = [p for p in part_files(out) if p != part
                      and not p.name.endswith(f"-of-{world_size}.part")]
            mykeys = {(p.id, s) for p in mine for s in range(n)}
            copied = _seed_part(part, out, others, mykeys)
            if copied:
                logger.info("%s: %d finished samples copied in from %s and older part files",
                            part.name, copied, out.name)
            st = generate(model, mine, part, device=_rank_device(device),
                          progress=progress and rank == 0, **gen_kw)
        with process_group("gloo", dist_timeout) as dist:
            try:
                dist.barrier()
            except Exception as e:  # gloo: timeout or a rank that died
                raise GenerationError(
                    f"rank {rank}: not every rank reached the merge of {out} within "
                    f"--dist-timeout {dist_timeout:g} s ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); the finished samples are kept "
                    "in the part files: rerun the same command to resume"
                ) from None
        if rank != 0:
            return st

        def check(merged: Path) -> None:
            # generate() on the merged file with the whole problem list: checks the settings
            # against OUT's, writes the merged run settings; nothing is left to generate
            generate(model, problems, merged, split=split, heldout_fraction=heldout_fraction,
                     split_seed=split_seed, limit=limit, device=device, progress=False,
                     **gen_kw)

        stats = merge_parts(out, probs, n, in_out, check)
        stats.seconds = time.perf_counter() - t0
        return stats


def _check_settings(
    model: str, probs: Sequence[Problem], in_out: set[Key], out: Path, n: int,
    gen_kw: dict[str, Any],
) -> None:
    """Before any generation: the run settings against OUT's, by ``generate()`` itself on the
    problems OUT already has complete (nothing is generated for them)."""
    done = [p for p in probs if all((p.id, s) in in_out for s in range(n))]
    if done:
        generate(model, done, out, progress=False, **gen_kw)


def merge_parts(
    out: str | os.PathLike[str], problems: Sequence[Problem], n: int, in_out: set[Key],
    check: Callable[[Path], None] | None = None,
) -> GenerateStats:
    """Merge every part file of ``out`` into it (rank 0, after the barrier): OUT's lines first,
    unchanged, then the new samples in problem order (samples of problems outside
    ``problems``, from older part files, after them in file order), each (problem, sample)
    once. ``in_out`` holds the (problem, sample) keys OUT had when the run started.

    The merged file is written atomically as ``OUT.merging`` (with OUT's run settings, or a
    part's when OUT has none), passed to ``check`` (which may raise: OUT is then untouched),
    renamed over OUT with its settings; then the part files are removed. Returns the stats of
    the merged new lines (``written``, ``correct``, ``flagged``, ``tokens``)."""
    out = Path(out)
    parts = part_files(out)
    found: dict[Key, tuple[Path, int, int]] = {}
    for p in parts:
        for _, off, ln, key in _complete_lines(p):
            if key not in in_out:
                found.setdefault(key, (p, off, ln))
    order = [(p.id, s) for p in problems for s in range(n)]
    ordered = set(order)
    new = [k for k in order if k in found] + [k for k in found if k not in ordered]
    stats = GenerateStats(len(problems), len(order), len(in_out & ordered), 0, 0, 0, 0, 0.0)
    if new:

        def rows() -> Iterator[dict[str, Any]]:
            for _, off, ln, _key in _complete_lines(out):
                yield json.loads(_read_at(out, off, ln))
            for k in new:
                row = json.loads(_read_at(*found[k]))
                stats.written += 1
                stats.correct += int(bool(row.get("correct")))
                stats.flagged += int(bool(row.get("flags")))
                stats.tokens += int(row.get("num_tokens", 0))
                yield row

        merging = out.with_name(out.name + ".merging")
        write_jsonl_atomic(merging, rows())
        if meta_path(out).exists():
            write_text_atomic(meta_path(merging), meta_path(out).read_text(encoding="utf-8"))
        elif parts and meta_path(parts[0]).exists():
            write_text_atomic(meta_path(merging), meta_path(parts[0]).read_text(encoding="utf-8"))
        if check is not None:
            check(merging)
        os.replace(merging, out)
        if meta_path(merging).exists():
            os.replace(meta_path(merging), meta_path(out))
        logger.info("%s: merged %d new samples from %d part file(s)", out, len(new), len(parts))
    _remove_merged_parts(out, in_out | set(found))
    return stats


def _remove_merged_parts(out: Path, merged: set[Key]) -> None:
    """Remove the part files (and their run settings) whose every line is in OUT."""
    for p in part_files(out):
        if all(k in merged for *_, k in _complete_lines(p)):
            p.unlink()
            meta_path(p).unlink(missing_ok=True)
