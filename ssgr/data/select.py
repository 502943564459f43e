"""``ssgr select``: turn TRACES.jsonl into a calibration set (CALIB.jsonl) by a strategy.

Per problem, correctness ``c = correct samples / samples``. A *clean correct* sample is correct and
has no quality flags (``truncated``, ``no_answer``, ``unclosed_think``, ``repetition``). Order of
candidates: sorted by ``(num_tokens, sample)``, so ties in length go to the lower sample index.

Strategies (the SSGR paper's calibration sets):

* ``ssgr`` - drop problems with ``c == 0`` (rule ``no_correct``), then ``c > tau`` (``too_easy``),
  then those without a clean correct sample (``no_clean_correct``); keep the lower median
  (index ``(k-1)//2``) of the k clean correct samples.
* ``sgr`` - one random sample per problem (any sample, correct or not, flagged or not), seeded by
  ``(seed, problem_id)``; no filtering.
* ``easy`` / ``medium`` / ``hard`` - difficulty tiers of c among problems with ``c > 0``
  (``tau`` is not applied): ``hard`` is ``0 < c <= 1/3``, ``medium`` ``1/3 < c <= 2/3``,
  ``easy`` ``c > 2/3`` (c = 1 included); problems of other tiers are dropped as ``other_tier``;
  the lower-median clean correct sample is kept.
* ``short`` / ``median`` / ``long`` - the ssgr filters, then the shortest / lower-median /
  longest clean correct sample (``median`` is ``ssgr``).
* ``no-think`` - the ``ssgr`` choice with the thinking removed: the text between ``<think>`` and
  ``</think>`` becomes ``"\\n\\n"`` (an empty think block, the non-thinking format).
* ``gold`` - the problems the ``ssgr`` filters keep, with the chosen response replaced by the
  dataset's ``solution`` (needs ``problems=``; problems without one are dropped as ``no_solution``).
  Same problems and prompts, so only the reasoning text differs.
* ``text`` - a generic corpus (:mod:`ssgr.data.corpus`), shuffled by ``seed`` by document,
  tokenized, concatenated and cut into ``max_length``-token chunks: ``num_sequences`` chunks or
  until ``token_budget`` tokens (the last chunk is cut to fit). The traces are not used.

Then at most ``num_sequences`` problems are kept (a seeded random subset, file order kept:
``over_num_sequences``) and, with ``token_budget``, sequences are kept in order until the next
would exceed it (``over_token_budget``). With a tokenizer every sequence is tokenized
(``add_special_tokens=False``: the chat template already has them) and truncated to
``max_length`` tokens.

Each CALIB.jsonl line: ``problem_id``, ``source`` (the strategy, or ``text:NAME``), ``text``
(chat prompt + response), ``num_tokens`` (``len(input_ids)`` with a tokenizer, else the response
tokens recorded in the traces), ``sample``, ``correctness`` (c), and ``input_ids`` with a
tokenizer, and then ``prompt_tokens``: how many of the ``input_ids`` are the chat prompt (the
longest common prefix of the line's ids and the prompt's own ids, so a token that straddles the
prompt/response boundary counts as response; 0 for ``text`` chunks). ``ssgr prune
--calib-tokens response`` calibrates on the positions after it only. Next to it:
``CALIB.summary.json`` and ``CALIB.summary.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssgr.data.errors import DataError
from ssgr.data.traces import Trace, read_traces
from ssgr.data.verify import THINK_CLOSE, THINK_OPEN
from ssgr.io import write_json_atomic, write_jsonl_atomic

logger = logging.getLogger(__name__)

STRATEGIES = (
    "ssgr", "sgr", "easy", "medium", "hard", "short", "median", "long", "no-think", "gold", "text",
)
TIER_CUTS = (1 / 3, 2 / 3)
TIERS = {
    "hard": (0.0, TIER_CUTS[0]),
    "medium": (TIER_CUTS[0], TIER_CUTS[1]),
    "easy": (TIER_CUTS[1], 1.0),
}
DROP_RULES = (
    "no_correct", "too_easy", "other_tier", "no_clean_correct", "no_solution",
    "over_num_sequences", "over_token_budget",
)


@dataclasses.dataclass
class ProblemGroup:
    """The samples of one problem (sorted by sample index) and its correctness c."""

    problem_id: str
    samples: list[Trace]

    @property
    def c(self) -> float:
        """Fraction of correct samples."""
        return sum(t.correct for t in self.samples) / len(self.samples)

    @property
    def clean_correct(self) -> list[Trace]:
        """Correct samples without flags, sorted by ``(num_tokens, sample)``."""
        return sorted((t for t in self.samples if t.correct and not t.flags),
                      key=lambda t: (t.num_tokens, t.sample))


@dataclasses.dataclass
class SelectionResult:
    """What ``select`` wrote."""

    out: Path
    summary_path: Path
    plot_path: Path | None
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def group_traces(traces: Sequence[Trace]) -> list[ProblemGroup]:
    """Group samples by problem, problems in order of first appearance."""
    groups: dict[str, list[Trace]] = {}
    for t in traces:
        groups.setdefault(t.problem_id, []).append(t)
    return [ProblemGroup(pid, sorted(ts, key=lambda t: t.sample)) for pid, ts in groups.items()]


def lower_median(cands: Sequence[Trace]) -> Trace:
    """Index ``(k-1)//2`` of candidates sorted by ``(num_tokens, sample)``."""
    s = sorted(cands, key=lambda t: (t.num_tokens, t.sample))
    return s[(len(s) - 1) // 2]


def in_tier(c: float, tier: str) -> bool:
    """Whether correctness c is in ``tier`` (see the module docstring for the cut points)."""
    lo, hi = TIERS[tier]
    return lo < c <= hi + 1e-12


def strip_thinking(text: str) -> str:
    """Replace the content of the last ``<think>...</think>`` block with ``"\\n\\n"``."""
    close = text.rfind(THINK_CLOSE)
    if close < 0:
        return text
    open_ = text.rfind(THINK_OPEN, 0, close)
    if open_ < 0:
        return text
    return text[: open_ + len(THINK_OPEN)] + "\n\n" + text[close:]


def _pick(
    groups: list[ProblemGroup], strategy: str, tau: float, seed: int, dropped: dict[str, int]
) -> list[tuple[ProblemGroup, Trace]]:
    picks: list[tuple[ProblemGroup, Trace]] = []
    for g in groups:
        if strategy == "sgr":
            rng = random.Random(f"ssgr-sgr:{seed}:{g.problem_id}")
            picks.append((g, rng.choice(g.samples)))
            continue
        c = g.c
        if c == 0:
            dropped["no_correct"] += 1
            continue
        if strategy in TIERS:
            if not in_tier(c, strategy):
                dropped["other_tier"] += 1
                continue
        elif c > tau:
            dropped["too_easy"] += 1
            continue
        cands = g.clean_correct
        if not cands:
            dropped["no_clean_correct"] += 1
            continue
        if strategy == "short":
            picks.append((g, cands[0]))
        elif strategy == "long":
            picks.append((g, cands[-1]))
        else:
            picks.append((g, lower_median(cands)))
    return picks


def _load_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load tokenizer {str(tokenizer)!r}: {e}") from None


def _length_stats(values: Sequence[int]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {
        "count": len(v), "min": v[0], "p25": q[0], "median": statistics.median(v), "p75": q[2],
        "max": v[-1], "mean": sum(v) / len(v), "total": sum(v),
    }


def _c_histogram(cs: Sequence[float], bins: int = 10) -> dict[str, Any]:
    counts = [0] * bins
    for c in cs:
        counts[min(int(c * bins), bins - 1)] += 1
    values: dict[str, int] = {}
    for c in sorted(cs):
        key = f"{c:.4f}"
        values[key] = values.get(key, 0) + 1
    return {"bin_edges": [i / bins for i in range(bins + 1)], "counts": counts, "values": values}


def _plot(path: Path, summary: dict[str, Any], cs: Sequence[float], sel_len: Sequence[int],
          all_len: Sequence[int]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        from ssgr.errors import missing_extra

        logger.warning("%s; no plot written", missing_extra("matplotlib", "the selection plot"))
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if cs:
        ax.hist(
            cs, bins=summary["correctness_histogram"]["bin_edges"], color="tab:blue", edgecolor="k"
        )
        if summary.get("tau") is not None and summary["strategy"] not in TIERS:
            ax.axvline(summary["tau"], color="tab:red", ls="--", label=f"tau = {summary['tau']}")
            ax.legend()
    ax.set_xlabel("problem correctness c = correct / samples")
    ax.set_ylabel("problems")
    ax.set_title("correctness")
    ax = axes[1]
    if all_len:
        ax.hist(all_len, bins=30, alpha=0.5, label="all clean correct samples", color="tab:gray")
    if sel_len:
        ax.hist(
            sel_len,
            bins=30,
            alpha=0.8,
            label=f"selected ({summary['strategy']})",
            color="tab:green",
        )
    ax.set_xlabel("tokens")
    ax.set_ylabel("sequences")
    ax.set_title("length")
    if all_len or sel_len:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _out_paths(out: Path) -> tuple[Path, Path]:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".summary.json"), out.with_name(stem + ".summary.png")


def _text_rows(corpus: str, tok: Any, num_sequences: int, token_budget: int | None,
               max_length: int, seed: int) -> list[dict[str, Any]]:
    from ssgr.data.corpus import load_corpus

    docs = load_corpus(corpus)
    random.Random(f"ssgr-text:{seed}").shuffle(docs)
    limit = token_budget if token_budget is not None else num_sequences * max_length
    ids: list[int] = []
    for d in docs:
        ids.extend(tok(d + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= limit:
            break
    ids = ids[:limit]
    name = corpus if corpus in ("wikitext", "news") else Path(corpus).name
    rows = []
    for i in range(0, len(ids), max_length):
        if token_budget is None and len(rows) >= num_sequences:
            break
        chunk = ids[i : i + max_length]
        rows.append({
            "problem_id": f"text-{i // max_length:05d}", "source": f"text:{name}",
            "text": tok.decode(chunk), "num_tokens": len(chunk), "input_ids": chunk,
            "prompt_tokens": 0,
        })
    if len(ids) < limit:
        logger.warning("corpus %s has only %d tokens (< %d requested)", corpus, len(ids), limit)
    return rows


def select(
    traces: str | os.PathLike[str] | None,
    strategy: str,
    out: str | os.PathLike[str],
    *,
    tau: float = 0.75,
    num_sequences: int = 128,
    token_budget: int | None = None,
    max_length: int = 32768,
    tokenizer: Any = None,
    problems: str | os.PathLike[str] | None = None,
    corpus: str | None = None,
    seed: int = 0,
    plot: bool = True,
) -> SelectionResult:
    """Select a calibration set from a traces file (see the module docstring).

    ``tokenizer`` is a name/path or a tokenizer object; with it every line gets ``input_ids``.
    Raises :class:`DataError` for bad options and when no problem survives the filters (the
    message gives the count each rule dropped; the summary is still written).
    """
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
        raise DataError(f"--tau must be in [0, 1], got {tau}")
    if num_sequences < 1:
        raise DataError(f"--num-sequences must be >= 1, got {num_sequences}")
    if token_budget is not None and token_budget < 1:
        raise DataError(f"--token-budget must be >= 1, got {token_budget}")
    if max_length < 1:
        raise DataError(f"--max-length must be >= 1, got {max_length}")
    if strategy in ("gold", "no-think", "text") and tokenizer is None:
        raise DataError(
            f"--strategy {strategy} rewrites the text, so it needs --tokenizer MODEL to count "
            "tokens"
        )
    if strategy == "gold" and problems is None:
        raise DataError(
            "--strategy gold needs --problems P.jsonl (the file with the 'solution' field)"
        )
    if strategy == "text" and corpus is None:
        raise DataError("--strategy text needs --corpus wikitext|news|FILE")
    from ssgr.data.outputs import check_output

    out = check_output(out)
    summary_path, plot_path = _out_paths(out)
    tok = _load_tokenizer(tokenizer)
    summary: dict[str, Any] = {
        "strategy": strategy, "tau": tau if strategy not in ("sgr", "text") else None,
        "seed": seed, "num_sequences": num_sequences, "token_budget": token_budget,
        "max_length": max_length, "traces": None if traces is None else str(traces),
        "tier_cuts": {k: list(v) for k, v in TIERS.items()},
    }

    if strategy == "text":
        rows = _text_rows(str(corpus), tok, num_sequences, token_budget, max_length, seed)
        if not rows:
            raise DataError(f"corpus {corpus!r} produced no tokens")
        lens = [r["num_tokens"] for r in rows]
        summary.update(
            {
                "corpus": str(corpus),
                "selected": len(rows),
                "selected_tokens": sum(lens),
                "lengths": {"selected": _length_stats(lens)},
                "correctness_histogram": None,
            }
        )
        write_jsonl_atomic(out, rows)
        write_json_atomic(summary_path, summary)
        pp = _plot(plot_path, summary, [], lens, []) if plot else None
        logger.info("%s: %d text chunks, %d tokens", out, len(rows), sum(lens))
        return SelectionResult(out, summary_path, pp, rows, summary)

    if traces is None:
        raise DataError(f"--strategy {strategy} needs a TRACES.jsonl file")
    groups = group_traces(read_traces(traces))
    dropped = dict.fromkeys(DROP_RULES, 0)
    picks = _pick(groups, strategy, tau, seed, dropped)

    solutions: dict[str, str | None] = {}
    if strategy == "gold":
        from ssgr.data.problems import read_problems_file

        solutions = {p.id: p.solution for p in read_problems_file(problems)}  # type: ignore[arg-type]
        kept = []
        for g, t in picks:
            if solutions.get(g.problem_id):
                kept.append((g, t))
            else:
                dropped["no_solution"] += 1
        picks = kept

    if len(picks) > num_sequences:
        idx = sorted(random.Random(f"ssgr-subset:{seed}").sample(range(len(picks)), num_sequences))
        dropped["over_num_sequences"] = len(picks) - num_sequences
        picks = [picks[i] for i in idx]

    rows: list[dict[str, Any]] = []
    prompt_ids: dict[str, list[int]] = {}
    kept_resp_tokens: list[int] = []
    truncated = 0
    total = 0
    for g, t in picks:
        if strategy == "gold":
            text = t.prompt + (solutions[g.problem_id] or "")
        elif strategy == "no-think":
            text = strip_thinking(t.prompt + t.response)
        else:
            text = t.prompt + t.response
        row: dict[str, Any] = {"problem_id": g.problem_id, "source": strategy, "text": text}
        if tok is not None:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_length:
                ids, truncated = ids[:max_length], truncated + 1
            row["num_tokens"] = len(ids)
            row["input_ids"] = ids
            if t.prompt not in prompt_ids:
                prompt_ids[t.prompt] = tok(t.prompt, add_special_tokens=False)["input_ids"]
            row["prompt_tokens"] = _common_prefix(ids, prompt_ids[t.prompt])
        else:
            row["num_tokens"] = t.num_tokens
        row["sample"] = t.sample
        row["correctness"] = g.c
        if token_budget is not None and total + row["num_tokens"] > token_budget:
            dropped["over_token_budget"] = len(picks) - len(rows)
            break
        total += row["num_tokens"]
        rows.append(row)
        kept_resp_tokens.append(t.num_tokens)

    cs = [g.c for g in groups]
    all_clean = [t.num_tokens for g in groups for t in g.clean_correct]
    sel_len = [r["num_tokens"] for r in rows]
    summary.update({
        "problems_total": len(groups),
        "samples_total": sum(len(g.samples) for g in groups),
        "selected": len(rows),
        "selected_tokens": sum(sel_len),
        "num_tokens_counts": "text tokens (prompt + response)" if tok is not None
        else "response tokens from the traces",
        "dropped": {k: v for k, v in dropped.items()},
        "truncated_to_max_length": truncated,
        "correctness_histogram": _c_histogram(cs),
        "lengths": {
            "selected": _length_stats(sel_len),
            "clean_correct_samples": _length_stats(all_clean),
            "all_samples": _length_stats([t.num_tokens for g in groups for t in g.samples]),
        },
    })
    write_json_atomic(summary_path, summary)
    if not rows:
        detail = ", ".join(f"{k}={v}" for k, v in dropped.items() if v) or "none"
        raise DataError(
            f"{traces}: no problem survived the filters of strategy {strategy!r} "
            f"({len(groups)} problems; dropped by rule: {detail}). "
            + ("Raise --tau, " if dropped["too_easy"] else "")
            + "generate more samples or problems, or pick another strategy; see "
            + str(summary_path)
        )
    write_jsonl_atomic(out, rows)
    # the plot compares response lengths (the unit of the traces) of selected vs all clean samples
    pp = _plot(plot_path, summary, cs, kept_resp_tokens, all_clean) if plot else None
    logger.info(
        "%s: %d sequences (%d tokens) from %d problems; dropped %s",
        out, len(rows), sum(sel_len), len(groups), {k: v for k, v in dropped.items() if v},
    )
    return SelectionResult(out, summary_path, pp, rows, summary)
