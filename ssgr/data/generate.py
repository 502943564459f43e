"""``ssgr generate``: sample responses to math problems and write checked TRACES.jsonl.

Paper defaults (the SSGR paper, arXiv 2511.18864; README section "Calibration data (SSGR)"):
16 samples per problem, temperature 0.6, top-p 0.95, up to 32768 new tokens, the model's own chat
template (so reasoning models open their ``<think>`` block). Each sample ``s`` of problem ``p`` is
drawn with its own seed :func:`sample_seed` ``(seed, p, s)``, whatever the batch it lands in.
Lines are appended as samples finish; re-running the same command skips every (problem, sample)
already in the file.
The run settings are stored in ``OUT.meta.json`` (written with the first sample; the side file
of an empty OUT is ignored) and a restart with different sampling settings, another model (by
content hash of its weights, config and tokenizer files, :func:`ssgr.models.model_fingerprint`)
or a problems file whose ids collide with different questions or answers (by
:func:`ssgr.data.problems.problem_hash`) is refused (write to a new file instead). One run at a
time per OUT (:func:`ssgr.io.output_lock`). A prompt that leaves no room to generate (prompt
tokens >= the model's context - 1) is refused before generation, naming the problem.

Early stopping (``early_stop=True``, ``ssgr generate --early-stop``): samples are drawn in rounds
and a problem stops being sampled as soon as its fate under the SSGR rule is decided exactly: once
more than ``tau x n`` of its samples are correct, ``c > tau`` whatever the others give, so
``ssgr select`` drops it as too easy (:func:`early_stop_decided`). Every other problem still gets
all ``n`` samples (c = 0 and the median-length correct sample need them all). Round 1 draws the
first :func:`early_stop_first_round` samples of every problem (the fewest that can decide one:
13 of 16 at tau 0.75), then each round one more sample of each undecided problem, batched across
problems. The samples drawn are the same (problem, sample, seed) as without early stopping, so
the strategies behind the ssgr filter (``ssgr``, ``short``, ``median``, ``long``, ``no-think``,
``gold``) select exactly the same CALIB.jsonl; ``sgr`` and the difficulty tiers need the full
samples. A resumed run counts the correct samples already in OUT. The saving can only come from
easy problems and is at most ``n - first round`` samples each (3 of 16 at tau 0.75);
:func:`early_stop_cost` computes it on full traces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssgr.data.backends.base import GENERATORS, Backend, Request, make_backend
from ssgr.data.errors import DataError
from ssgr.data.outputs import check_output, is_write_failure, write_failure
from ssgr.data.problems import Problem, problem_hash, select_problems
from ssgr.data.traces import Trace, TraceWriter
from ssgr.data.verify import check_response
from ssgr.io import output_lock, write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_META_KEYS = (
    "model", "model_sha256", "seed", "temperature", "top_p", "max_new_tokens", "instruction",
)
#: Characters of a prompt tokenized to test it against the context (per context position); a
#: longer prompt is refused from this prefix alone when the prefix already fills the context.
_CHARS_PER_POSITION = 64


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
    #: With early stopping: problems stopped early, samples not drawn, and those samples' tokens
    #: estimated as the mean length of the problem's drawn samples (never generated, so unknown).
    early_stopped: int = 0
    samples_saved: int = 0
    tokens_saved_estimate: int = 0


def early_stop_decided(correct: int, n: int, tau: float) -> bool:
    """Whether ``correct`` correct samples already decide that a problem of ``n`` samples has
    ``c = correct_total / n > tau`` (the SSGR ``too_easy`` rule of :mod:`ssgr.data.select`, same
    expression), whatever the remaining samples give."""
    return correct / n > tau


def early_stop_first_round(n: int, tau: float) -> int:
    """The fewest samples that can decide a problem: the smallest ``m <= n`` with
    ``m / n > tau`` (``n`` when none)."""
    return next((m for m in range(1, n + 1) if early_stop_decided(m, n, tau)), n)


def early_stop_cost(traces: list[Trace], n: int, tau: float) -> dict[str, int]:
    """What ``--early-stop`` draws for the problems of full ``traces`` (samples ``0..n-1``):
    a problem stops after the first sample, in index order, that makes it decided.

    Returns ``{"samples", "tokens", "samples_saved", "tokens_saved", "problems_stopped"}``
    (tokens: response tokens as recorded in the traces; exact, the samples being the same).
    """
    groups: dict[str, list[Trace]] = {}
    for t in traces:
        if t.sample < n:
            groups.setdefault(t.problem_id, []).append(t)
    samples = tokens = total_s = total_t = stopped = 0
    for ts in groups.values():
        ts.sort(key=lambda t: t.sample)
        correct = 0
        for i, t in enumerate(ts):
            correct += t.correct
            samples += 1
            tokens += t.num_tokens
            if early_stop_decided(correct, n, tau) and i + 1 < len(ts):
                stopped += 1
                break
        total_s += len(ts)
        total_t += sum(t.num_tokens for t in ts)
    return {"samples": samples, "tokens": tokens, "samples_saved": total_s - samples,
            "tokens_saved": total_t - tokens, "problems_stopped": stopped}


def meta_path(out: str | os.PathLike[str]) -> Path:
    """The run-settings side file of a traces file: ``OUT.meta.json``."""
    return Path(str(out) + ".meta.json")


def _check_meta(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Compare this run's settings with those stored beside a non-empty ``out``; return the
    settings to store (problem hashes merged). The side file of an empty ``out`` (a failed
    start) is ignored."""
    mpath = meta_path(out)
    if not (out.exists() and out.stat().st_size > 0):
        return meta
    if not mpath.exists():
        logger.warning("%s exists without %s; resuming without checking settings", out, mpath.name)
        return meta
    try:
        old = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{mpath}: unreadable run settings; delete it to resume anyway") from None
    if not isinstance(old, dict):
        raise DataError(f"{mpath}: unreadable run settings; delete it to resume anyway")
    for k in _META_KEYS:
        if k in old and k in meta and old[k] != meta[k]:
            what = " (content hash of the model's weights, config and tokenizer files)" \
                if k == "model_sha256" else ""
            raise DataError(
                f"{out} was generated with {k}={old[k]!r} but this run has {k}={meta[k]!r}{what}; "
                "use a new --out file (or the same settings to resume)"
            )
    old_hashes = old.get("problem_hashes")
    new_hashes: dict[str, str] = meta["problem_hashes"]
    if not isinstance(old_hashes, dict):
        logger.warning(
            "%s has no problem hashes (written by an older ssgr); cannot check that its samples "
            "belong to these problems", mpath,
        )
        return meta
    changed = [pid for pid, h in new_hashes.items() if pid in old_hashes and old_hashes[pid] != h]
    if changed:
        shown = ", ".join(repr(c) for c in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise DataError(
            f"{out} holds samples of problem id(s) {shown}{more} whose question or answer differ "
            f"in {meta['problems']}; its samples would be checked against the wrong problems: "
            "use a new --out file"
        )
    return {**meta, "problem_hashes": {**old_hashes, **new_hashes}}


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
    early_stop: bool = False,
    tau: float = 0.75,
) -> GenerateStats:
    """Generate ``n`` samples per problem into the append-only traces file ``out``.

    ``problems`` is a jsonl path, a ``builtin:NAME`` source or a list of problems; ``split``
    (``all``/``calib``/``heldout``, with ``heldout_fraction`` and ``split_seed``) restricts them
    to one side of :func:`ssgr.data.problems.split_problems`; ``limit`` keeps the first K.
    ``batch_size`` is the number of samples per backend call (default: ``n`` for ``hf``, 256
    for ``vllm``, 64 concurrent requests for ``openai``). ``generator`` is ``hf``, ``vllm`` or
    ``openai`` (``backend=`` is its deprecated old name); ``backend_obj`` injects a ready
    generation backend and ``backend_kwargs`` are extra arguments of its constructor.
    ``early_stop`` stops sampling a problem once more than ``tau x n`` samples are correct (see
    the module docstring; ``tau`` is the SSGR threshold of ``ssgr select``).

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
    if early_stop and not 0.0 <= tau <= 1.0:
        raise DataError(f"--tau must be in [0, 1], got {tau}")
    if generator not in GENERATORS:
        raise DataError(f"unknown generator {generator!r}; choose one of {', '.join(GENERATORS)}")
    if generator == "openai" and not server and not backend_obj:
        raise DataError("--generator openai needs --server URL (e.g. http://127.0.0.1:8000)")
    out = check_output(out)
    if generator != "openai" and backend_obj is None:
        from ssgr.models import MODEL_NAMES, resolve_model

        if str(model) in MODEL_NAMES:
            model = str(resolve_model(model))
    source = "<list>" if isinstance(problems, list) else str(problems)
    probs = select_problems(problems, split, heldout_fraction, split_seed, limit)
    if batch_size is None:
        batch_size = {"hf": n, "vllm": 256, "openai": 64}[generator]
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")

    meta: dict[str, Any] = {
        "model": str(model), "seed": seed, "temperature": temperature, "top_p": top_p,
        "max_new_tokens": max_new_tokens, "instruction": instruction, "backend": generator,
        "n": n, "problems": source, "split": split,
    }
    if generator != "openai" and Path(model).is_dir():
        from ssgr.models import model_fingerprint

        meta["model_sha256"] = model_fingerprint(model)
    meta["problem_hashes"] = {p.id: problem_hash(p) for p in probs}
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "--out"):
        try:
            return _generate_locked(
                out, meta, probs, n, batch_size, generator, model, backend_obj, backend_kwargs,
                dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                     seed=seed, device=device, dtype=dtype, server=server),
                seed, instruction, progress, tau if early_stop else None,
            )
        except OSError as e:
            if not is_write_failure(e):
                raise
            raise write_failure(e, out) from None


def _generate_locked(
    out: Path, meta: dict[str, Any], probs: list[Problem], n: int, batch_size: int,
    generator: str, model: str, backend_obj: Backend | None,
    backend_kwargs: dict[str, Any] | None, kwargs: dict[str, Any], seed: int, instruction: str,
    progress: bool, tau: float | None = None,
) -> GenerateStats:
    meta = _check_meta(out, meta)
    mpath = meta_path(out)
    write_meta: Callable[[], None] | None = None
    if out.exists() and out.stat().st_size > 0:
        write_json_atomic(mpath, meta)
    else:

        def write_meta() -> None:
            write_json_atomic(mpath, meta)

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
            if generator == "openai":
                kwargs["concurrency"] = batch_size
            kwargs.update(backend_kwargs or {})
            backend_obj = make_backend(generator, str(model), **kwargs)
        try:
            prompts = _prompts(backend_obj, pending, instruction)
            if write_meta is not None:
                writer.before_first_write = write_meta
            if tau is None:
                _run(backend_obj, pending, prompts, writer, stats, batch_size, seed, progress, t0)
            else:
                _run_early_stop(out, backend_obj, probs, n, tau, prompts, writer, stats,
                                batch_size, seed, progress, t0)
        finally:
            if own:
                backend_obj.close()
    stats.seconds = time.perf_counter() - t0
    logger.info(
        "%s: wrote %d samples (%d correct, %d flagged, %d tokens) in %.1fs",
        out, stats.written, stats.correct, stats.flagged, stats.tokens, stats.seconds,
    )
    if tau is not None:
        logger.info(
            "%s: --early-stop: %d of %d problems decided early (c > tau=%g); %d samples "
            "(~%d tokens) not generated", out, stats.early_stopped, stats.problems, tau,
            stats.samples_saved, stats.tokens_saved_estimate,
        )
    return stats


def _run_early_stop(
    out: Path, backend: Backend, probs: list[Problem], n: int, tau: float,
    prompts: dict[str, tuple[str, list[dict[str, str]]]], writer: TraceWriter,
    stats: GenerateStats, batch_size: int, seed: int, progress: bool, t0: float,
) -> None:
    """Rounds of :func:`_run` (see the module docstring); a problem is no longer sampled once
    :func:`early_stop_decided` holds for its correct samples so far (those already in ``out``
    included)."""
    from ssgr.data.traces import read_traces

    correct = {p.id: 0 for p in probs}
    drawn = {p.id: 0 for p in probs}
    tokens = {p.id: 0 for p in probs}
    for t in read_traces(out) if out.exists() and out.stat().st_size else []:
        if t.problem_id in correct and t.sample < n:
            correct[t.problem_id] += t.correct
            drawn[t.problem_id] += 1
            tokens[t.problem_id] += t.num_tokens

    def count(t: Trace) -> None:
        correct[t.problem_id] += t.correct
        drawn[t.problem_id] += 1
        tokens[t.problem_id] += t.num_tokens

    first = early_stop_first_round(n, tau)
    bounds = [(0, first)] + [(s, s + 1) for s in range(first, n)]
    for lo, hi in bounds:
        todo = [(p, s) for p in probs if not early_stop_decided(correct[p.id], n, tau)
                for s in range(lo, hi) if (p.id, s) not in writer.done]
        if todo:
            _run(backend, todo, prompts, writer, stats, batch_size, seed, progress, t0,
                 on_trace=count)
    for p in probs:
        missing = n - drawn[p.id]
        if missing and early_stop_decided(correct[p.id], n, tau):
            stats.early_stopped += 1
            stats.samples_saved += missing
            stats.tokens_saved_estimate += round(missing * tokens[p.id] / max(drawn[p.id], 1))


def prompt_room(tokenizer: Any, prompt: str, context: int) -> int | None:
    """The number of prompt tokens when ``prompt`` fills ``context - 1`` positions or more (no
    room to generate), else None.

    A prompt longer than ``64 x context`` characters is judged by the tokens of that prefix
    first, so a huge prompt is refused without tokenizing all of it.
    """
    limit = _CHARS_PER_POSITION * context
    if len(prompt) > limit:
        head = len(tokenizer(prompt[:limit], add_special_tokens=False)["input_ids"])
        if head >= context - 1:
            return head
    count = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return count if count >= context - 1 else None


def _prompts(
    backend: Backend, pending: list[tuple[Problem, int]], instruction: str
) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """The formatted prompt of every pending problem; refuses (before any generation) the
    problems whose prompt leaves no room to generate in the model's context."""
    prompts: dict[str, tuple[str, list[dict[str, str]]]] = {}
    tokenizer = getattr(backend, "tokenizer", None)
    context = getattr(backend, "max_positions", None)
    too_long: list[str] = []
    for p, _ in pending:
        if p.id in prompts:
            continue
        msgs = build_messages(p, instruction)
        prompts[p.id] = (backend.format_prompt(msgs), msgs)
        if tokenizer is not None and isinstance(context, int) and context > 0:
            count = prompt_room(tokenizer, prompts[p.id][0], context)
            if count is not None:
                too_long.append(f"{p.id!r} ({count} tokens)")
    if too_long:
        shown = ", ".join(too_long[:5]) + (f" and {len(too_long) - 5} more"
                                            if len(too_long) > 5 else "")
        raise DataError(
            f"prompt of problem {shown} leaves no room to generate in the model's {context}-token "
            "context (a prompt may use at most context - 2 tokens); shorten or drop those problems"
        )
    return prompts


def _run(
    backend: Backend,
    pending: list[tuple[Problem, int]],
    prompts: dict[str, tuple[str, list[dict[str, str]]]],
    writer: TraceWriter,
    stats: GenerateStats,
    batch_size: int,
    seed: int,
    progress: bool,
    t0: float,
    on_trace: Callable[[Trace], None] | None = None,
) -> None:
    from tqdm.auto import tqdm

    by_id = {p.id: p for p, _ in pending}
    bar = tqdm(total=len(pending), unit="sample", desc="generate", disable=not progress)
    try:
        for b in range(0, len(pending), batch_size):
            reqs = []
            for p, s in pending[b : b + batch_size]:
                prompt, msgs = prompts[p.id]
                reqs.append(Request(p.id, s, prompt, msgs, sample_seed(seed, p.id, s)))
            for c in backend.generate(reqs):
                prob = by_id[c.request.problem_id]
                prompt = c.prompt if c.prompt is not None else c.request.prompt
                v = check_response(c.response, prob.answer, c.finish_reason, prompt)
                trace = Trace(prob.id, c.request.sample, prompt, c.response, c.num_tokens,
                              c.finish_reason, v.answer, v.correct, v.flags)
                writer.write(trace)
                if on_trace is not None:
                    on_trace(trace)
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
