"""``ssgr generate``: sample responses to math problems and write checked TRACES.jsonl.

Paper defaults (the SSGR paper, arXiv 2511.18864; README section "Calibration data (SSGR)"):
16 samples per problem, temperature 0.6, top-p 0.95, up to 32768 new tokens, the model's own chat
template (so reasoning models open their ``<think>`` block). Each sample ``s`` of problem ``p`` is
drawn with its own seed :func:`sample_seed` ``(seed, p, s)``, whatever the batch it lands in.
Lines are appended as samples finish; re-running the same command skips every (problem, sample)
already in the file.
The run settings are stored in ``OUT.meta.json`` and a restart with different sampling settings
is refused (write to a new file instead).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ssgr.data.backends.base import GENERATORS, Backend, Request, make_backend
from ssgr.data.errors import DataError
from ssgr.data.problems import Problem, select_problems
from ssgr.data.traces import Trace, TraceWriter
from ssgr.data.verify import check_response
from ssgr.io import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_META_KEYS = ("model", "seed", "temperature", "top_p", "max_new_tokens", "instruction")


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """The sampling seed of one sample: 31 bits of ``sha256(f"{seed}:{problem_id}:{sample}")``."""
    h = hashlib.sha256(f"{seed}:{problem_id}:{sample}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def build_messages(
    problem: Problem, instruction: str = DEFAULT_INSTRUCTION
) -> list[dict[str, str]]:
    """The chat for one problem: a single user turn, question then ``instruction``."""
    content = problem.question.strip()
    if instruction:
        content = f"{content}\n{instruction}"
    return [{"role": "user", "content": content}]


def format_prompt(tokenizer: Any, problem: Problem, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The exact prompt text ``ssgr generate`` gives a transformers model (for training/eval)."""
    from ssgr.data.backends.base import format_with_template

    return format_with_template(tokenizer, build_messages(problem, instruction))


@dataclasses.dataclass
class GenerateStats:
    """What one ``generate`` call did."""

    problems: int
    samples_total: int
    skipped: int
    written: int
    correct: int
    flagged: int
    tokens: int
    seconds: float


def _check_meta(out: Path, meta: dict[str, Any]) -> None:
    mpath = Path(str(out) + ".meta.json")
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text())
        except json.JSONDecodeError:
            raise DataError(
                f"{mpath}: unreadable run settings; delete it to resume anyway"
            ) from None
        for k in _META_KEYS:
            if k in old and old[k] != meta[k]:
                raise DataError(
                    f"{out} was generated with {k}={old[k]!r} but this run has {k}={meta[k]!r}; "
                    "use a new --out file (or the same settings to resume)"
                )
    elif out.exists() and out.stat().st_size > 0:
        logger.warning("%s exists without %s; resuming without checking settings", out, mpath.name)
    write_json_atomic(mpath, meta)


def generate(
    model: str,
    problems: str | os.PathLike[str] | list[Problem],
    out: str | os.PathLike[str],
    *,
    generator: str = "hf",
    server: str | None = None,
    n: int = 16,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 32768,
    batch_size: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    device: str | None = None,
    split: str = "all",
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    instruction: str = DEFAULT_INSTRUCTION,
    dtype: str | None = None,
    backend_obj: Backend | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    backend: str | None = None,
) -> GenerateStats:
    """Generate ``n`` samples per problem into the append-only traces file ``out``.

    ``problems`` is a jsonl path, a ``builtin:NAME`` source or a list of problems; ``split``
    (``all``/``calib``/``heldout``, with ``heldout_fraction`` and ``split_seed``) restricts them
    to one side of :func:`ssgr.data.problems.split_problems`; ``limit`` keeps the first K.
    ``batch_size`` is the number of samples per backend call (default: ``n`` for ``hf``, 256
    for ``vllm``, 64 concurrent requests for ``openai``). ``generator`` is ``hf``, ``vllm`` or
    ``openai`` (``backend=`` is its deprecated old name); ``backend_obj`` injects a ready
    generation backend and ``backend_kwargs`` are extra arguments of its constructor.

    Raises :class:`~ssgr.data.errors.DataError` for bad options or input and
    :class:`~ssgr.data.errors.GenerationError` when the generator fails.
    """
    if backend is not None:
        logger.warning("generate(backend=...) is deprecated; use generator=%r", backend)
        generator = backend
    if n < 1:
        raise DataError(f"--n must be >= 1, got {n}")
    if temperature < 0:
        raise DataError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise DataError(f"--top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise DataError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if generator not in GENERATORS:
        raise DataError(f"unknown generator {generator!r}; choose one of {', '.join(GENERATORS)}")
    if generator == "openai" and not server and not backend_obj:
        raise DataError("--generator openai needs --server URL (e.g. http://127.0.0.1:8000)")
    source = "<list>" if isinstance(problems, list) else str(problems)
    probs = select_problems(problems, split, heldout_fraction, split_seed, limit)
    if batch_size is None:
        batch_size = {"hf": n, "vllm": 256, "openai": 64}[generator]
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")

    out = Path(out)
    meta = {
        "model": str(model), "seed": seed, "temperature": temperature, "top_p": top_p,
        "max_new_tokens": max_new_tokens, "instruction": instruction, "backend": generator,
        "n": n, "problems": source, "split": split,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_meta(out, meta)

    t0 = time.perf_counter()
    with TraceWriter(out) as writer:
        pending = [(p, s) for p in probs for s in range(n) if (p.id, s) not in writer.done]
        skipped = len(probs) * n - len(pending)
        if skipped:
            logger.info("%s: %d of %d samples already done; resuming", out, skipped, len(probs) * n)
        stats = GenerateStats(len(probs), len(probs) * n, skipped, 0, 0, 0, 0, 0.0)
        if not pending:
            return stats
        own = backend_obj is None
        if backend_obj is None:
            kwargs: dict[str, Any] = dict(
                temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                device=device, dtype=dtype, server=server,
            )
            if generator == "openai":
                kwargs["concurrency"] = batch_size
            kwargs.update(backend_kwargs or {})
            backend_obj = make_backend(generator, str(model), **kwargs)
        try:
            _run(backend_obj, pending, writer, stats, batch_size, seed, instruction, progress, t0)
        finally:
            if own:
                backend_obj.close()
    stats.seconds = time.perf_counter() - t0
    logger.info(
        "%s: wrote %d samples (%d correct, %d flagged, %d tokens) in %.1fs",
        out, stats.written, stats.correct, stats.flagged, stats.tokens, stats.seconds,
    )
    return stats


def _run(
    backend: Backend,
    pending: list[tuple[Problem, int]],
    writer: TraceWriter,
    stats: GenerateStats,
    batch_size: int,
    seed: int,
    instruction: str,
    progress: bool,
    t0: float,
) -> None:
    from tqdm.auto import tqdm

    prompts: dict[str, tuple[str, list[dict[str, str]]]] = {}
    by_id = {p.id: p for p, _ in pending}
    bar = tqdm(total=len(pending), unit="sample", desc="generate", disable=not progress)
    try:
        for b in range(0, len(pending), batch_size):
            reqs = []
            for p, s in pending[b : b + batch_size]:
                if p.id not in prompts:
                    msgs = build_messages(p, instruction)
                    prompts[p.id] = (backend.format_prompt(msgs), msgs)
                prompt, msgs = prompts[p.id]
                reqs.append(Request(p.id, s, prompt, msgs, sample_seed(seed, p.id, s)))
            for c in backend.generate(reqs):
                prob = by_id[c.request.problem_id]
                prompt = c.prompt if c.prompt is not None else c.request.prompt
                v = check_response(c.response, prob.answer, c.finish_reason, prompt)
                writer.write(
                    Trace(prob.id, c.request.sample, prompt, c.response, c.num_tokens,
                          c.finish_reason, v.answer, v.correct, v.flags)
                )
                stats.written += 1
                stats.correct += int(v.correct)
                stats.flagged += int(bool(v.flags))
                stats.tokens += c.num_tokens
                bar.update(1)
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    {"samples/s": f"{stats.written / dt:.2f}", "tok/s": f"{stats.tokens / dt:.0f}",
                     "acc": f"{stats.correct / stats.written:.2f}"},
                    refresh=False,
                )
            writer.sync()
    finally:
        bar.close()
