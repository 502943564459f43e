"""``ssgr run``: the main job. Generate -> select -> prune -> evaluate, for several calibration
sources side by side, on one model (the embedded ``tiny`` reasoning model by default).

Stages and where they keep their work (under ``--out DIR``; every stage reuses what an earlier,
interrupted run finished):

1. ``traces.jsonl``: ``n`` samples per calibration problem from the dense model
   (:func:`ssgr.data.generate.generate`, append-only, resumes by itself).
2. ``calib/<source>.jsonl``: one calibration set per source (:func:`ssgr.data.select.select`).
   ``ssgr`` goes first; every other source then keeps at most as many sequences as ssgr did, and
   ``text`` is cut to the same number of sequences and tokens, so the sources compete at (nearly)
   equal calibration size.
3. ``pruned/<source>/``: the pruned model (:func:`ssgr.prune.engine.prune_model`), resumed from
   its last finished layer when interrupted.
4. ``eval/<name>.json``: pass@1 over ``k`` samples on held-out problems, mean response tokens,
   truncation rate (:func:`ssgr.eval.accuracy.evaluate`, resumes through its traces), and
   ``ppl/<name>.json``: perplexity on the dense model's held-out traces (and on a text corpus
   for models with a general vocabulary).
5. ``results.json``, ``results.png`` (skipped with a WARNING naming the extra when matplotlib
   is missing) and the printed table.

Every artifact depends on the settings, the model and the problems, so ``OUT/run_key.json``
holds the settings with the content hashes of the model (:func:`ssgr.models.model_fingerprint`)
and of the problems; a re-run into the same ``--out`` with anything different is refused, naming
what differs (choose another ``--out``, or ``--overwrite`` to discard the old run: it removes only
files ``ssgr run`` wrote, listed in ``OUT/.ssgr-owned.json``). One run at a time per ``--out``
(:func:`ssgr.io.output_lock`); results and progress files are written temp-then-rename.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ssgr.data.backends.base import GENERATORS
from ssgr.demo import METHODS, parse_sparsity
from ssgr.errors import InputError
from ssgr.io import claim_files, output_lock, remove_owned, write_json_atomic
from ssgr.options import option

log = logging.getLogger(__name__)

DEFAULT_SOURCES = ("text", "gold", "sgr", "ssgr")
ABLATIONS = ("easy", "medium", "hard", "short", "long", "no-think")

#: Sizes of the default run and of ``--quick`` (the tiny model's numbers on a 2-core CPU).
PRESETS: dict[str, dict[str, int]] = {
    "default": {"n": 16, "calib_problems": 128, "eval_problems": 200, "k": 4, "max_new_tokens": 160,
                "num_sequences": 64},
    "quick": {"n": 8, "calib_problems": 32, "eval_problems": 40, "k": 2, "max_new_tokens": 128,
              "num_sequences": 16},
}


@dataclass
class RunConfig:
    """Options of ``ssgr run`` (and of :func:`run`). Size options left at None take the preset's
    value (:data:`PRESETS`: ``quick`` with ``--quick``, else ``default``)."""

    model: str = option("tiny", help="tiny (embedded), smollm2, or a model directory")
    method: str = option("sparsegpt", choices=METHODS, help="pruning method")
    sparsity: str = option("2:4", help="0.5, 2:4, 4:8, N:M")
    out: str = option("runs/main", help="run directory (reused when re-run)")
    quick: bool = option(False, help="small sizes (CI runs this)")
    sources: list[str] = option(
        sep=",", default_factory=lambda: list(DEFAULT_SOURCES),
        help="comma-separated calibration sources (select strategies)",
    )
    ablations: bool = option(False, help="add easy, medium, hard, short, long and no-think")
    problems: str = option("builtin:arith", help="problems jsonl or builtin:NAME")
    n: int | None = option(None, help="samples per calibration problem")
    calib_problems: int | None = option(None, help="calibration problems to sample")
    eval_problems: int | None = option(None, help="held-out problems to evaluate")
    k: int | None = option(None, help="samples per held-out problem (pass@1 over k)")
    max_new_tokens: int | None = option(None, help="response token limit")
    num_sequences: int | None = option(None, help="calibration sequences per source")
    tau: float = option(0.75, help="SSGR: drop problems with correctness above tau")
    corpus: str = option("news", help="generic text for the text source and text ppl")
    generator: str = option(
        "hf", choices=GENERATORS, deprecated=["--backend"],
        help="generation backend for the calibration traces",
    )
    server: str | None = option(
        None, help="OpenAI-compatible server URL (--generator openai; MODEL is the served name)"
    )
    tokenizer: str | None = option(
        None, help="--generator openai: local tokenizer path to format prompts (default: the "
        "model directory)",
    )
    device: str | None = option(None, help="torch device (default cuda if present)")
    seed: int = option(0, help="seed of sampling, selection and the problem split")
    overwrite: bool = option(
        False, help="discard an earlier run in --out made with other settings (only files ssgr "
        "run wrote are removed)",
    )

    def resolved(self) -> RunConfig:
        """A copy with the preset filled in and the source list validated."""
        from ssgr.data.select import STRATEGIES

        preset = PRESETS["quick" if self.quick else "default"]
        vals = asdict(self)
        for key, v in preset.items():
            if vals[key] is None:
                vals[key] = v
        sources = list(
            dict.fromkeys(list(self.sources) + (list(ABLATIONS) if self.ablations else []))
        )
        bad = [s for s in sources if s not in STRATEGIES]
        if bad:
            raise InputError(
                f"unknown calibration source(s) {', '.join(bad)}; "
                f"choose from {', '.join(STRATEGIES)}"
            )
        if not sources:
            raise InputError("--sources is empty; name at least one calibration source")
        if self.generator == "openai" and not self.server:
            raise InputError("--generator openai needs --server URL (e.g. http://127.0.0.1:8000)")
        vals["sources"] = sources
        parse_sparsity(self.sparsity)
        for key in ("n", "calib_problems", "eval_problems", "k", "max_new_tokens", "num_sequences"):
            if vals[key] < 1:
                raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {vals[key]}")
        return RunConfig(**vals)


#: What ``ssgr run`` writes in ``--out`` (its manifest for ``--overwrite``).
_OWNED = ("run_config.json", "run_key.json", "problems.jsonl", "traces.jsonl",
          "traces.jsonl.meta.json", "calib", "pruned", "eval", "ppl", "results.json",
          "results.png")
#: Settings that do not change any artifact.
_UNKEYED = ("out", "quick", "overwrite", "ablations")


def run_key(cfg: RunConfig, model_dir: Path) -> dict[str, Any]:
    """What every artifact of a run depends on: the resolved settings (all but ``out``,
    ``quick``, ``overwrite`` and ``ablations``, which are folded into the sizes and sources),
    the model's content hash and the problems' (sha256 over ids, questions and answers)."""
    import hashlib

    from ssgr.data.problems import load_problems, problem_hash
    from ssgr.models import model_fingerprint

    h = hashlib.sha256()
    for p in load_problems(cfg.problems):
        h.update(f"{p.id}\0{problem_hash(p)}\n".encode())
    settings = {k: v for k, v in asdict(cfg).items() if k not in _UNKEYED}
    return {"settings": settings, "model_sha256": model_fingerprint(model_dir),
            "problems_sha256": h.hexdigest()}


def _key_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = []
    olds, news = old.get("settings", {}), new["settings"]
    for k, v in news.items():
        if k in olds and olds[k] != v:
            diff.append(f"{k} {olds[k]!r} -> {v!r}")
    for k, what in (("model_sha256", "model weights/config/tokenizer (content hash)"),
                    ("problems_sha256", "problems (content hash)")):
        if k in old and old[k] != new[k]:
            diff.append(f"{what} differ")
    return diff


def _check_key(out: Path, key: dict[str, Any], overwrite: bool) -> None:
    """Refuse (or with ``overwrite`` empty) an ``out`` holding a run with another key."""
    kpath, cpath = out / "run_key.json", out / "run_config.json"
    old: dict[str, Any] | None = None
    if kpath.is_file():
        old = _read_json(kpath)
    elif cpath.is_file():  # a run of an older ssgr: settings only
        old = {"settings": _read_json(cpath)}
    if not old:
        return
    diff = _key_diff(old, key)
    if not diff:
        return
    if overwrite:
        log.warning("--overwrite: discarding the earlier run in %s (%s)", out, "; ".join(diff))
        remove_owned(out, "--overwrite")
        return
    raise InputError(
        f"--out {out} holds a run made with other settings ({'; '.join(diff)}); its traces, "
        "calibration sets, pruned models and results do not fit this run: choose another --out, "
        "or add --overwrite to discard the old run"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _calib_stats(path: Path) -> tuple[int, int]:
    """(sequences, tokens) of a CALIB.jsonl."""
    seqs = toks = 0
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                seqs += 1
                toks += (
                    len(row["input_ids"]) if "input_ids" in row else int(row.get("num_tokens", 0))
                )
    return seqs, toks


def _context_length(model_dir: Path) -> int:
    """The model's context (``max_position_embeddings``), capped at 32768 tokens."""
    cfg = json.loads((model_dir / "config.json").read_text())
    return min(int(cfg.get("max_position_embeddings") or 32768), 32768)


def _freeze_problems(source: str, path: Path) -> Path:
    """Write the problems (a file or a ``builtin:`` source) once into the run directory, so every
    stage, and a resumed run, reads exactly the same list."""
    from ssgr.data.problems import load_problems, write_problems

    if not path.is_file():
        write_problems(path, load_problems(source))  # atomic (temp file, fsync, rename)
    return path


def _select_all(cfg: RunConfig, model_dir: Path, traces: Path, problems: Path,
                out: Path) -> dict[str, Path]:
    from ssgr.data.select import select

    calib_dir = out / "calib"
    calib_dir.mkdir(parents=True, exist_ok=True)
    order = sorted(cfg.sources, key=lambda s: (s != "ssgr", s == "text"))
    context = _context_length(model_dir)
    paths: dict[str, Path] = {}
    budget: tuple[int, int] | None = None
    for src in order:
        path = calib_dir / f"{src}.jsonl"
        if not path.is_file():
            kw: dict[str, Any] = {"max_length": context}
            if budget is not None:
                # every other source gets at most as many sequences as ssgr kept
                kw["num_sequences"] = budget[0]
            if src == "text":
                kw["corpus"] = cfg.corpus
                if budget is not None:
                    # as many chunks as ssgr has sequences, of its mean length, same token total
                    seqs, toks = budget
                    kw.update(token_budget=toks, max_length=min(context, max(1, -(-toks // seqs))))
            tmp = calib_dir / f".{src}.partial.jsonl"
            select(
                None if src == "text" else traces, src, tmp, tau=cfg.tau,
                num_sequences=kw.pop("num_sequences", cfg.num_sequences), tokenizer=str(model_dir),
                problems=str(problems), seed=cfg.seed, plot=False, **kw,
            )
            os.replace(tmp, path)
            for suffix in (".summary.json",):
                side = tmp.with_name(tmp.stem + suffix)
                if side.is_file():
                    os.replace(side, path.with_name(path.stem + suffix))
        if src == "ssgr":
            seqs, toks = _calib_stats(path)
            budget = (seqs, toks)
        paths[src] = path
    return paths


def _prune(cfg: RunConfig, model_dir: Path, calib: Path, dest: Path) -> dict[str, Any]:
    from ssgr.prune.engine import REPORT, STATE_DIR, PruneConfig, prune_model

    report = _read_json(dest / REPORT)
    if report is not None:
        return report
    resume = (dest / STATE_DIR / "state.json").is_file()
    overwrite = dest.exists() and not resume
    return prune_model(
        PruneConfig(
            model=str(model_dir), calib=str(calib), out=str(dest), method=cfg.method,
            sparsity=cfg.sparsity, device=cfg.device, resume=resume, overwrite=overwrite,
        )
    )


def _evaluate(cfg: RunConfig, model_dir: Path, problems: Path, dest: Path) -> dict[str, Any]:
    from ssgr.eval.accuracy import evaluate

    done = _read_json(dest)
    if done is not None:
        return done
    return evaluate(
        str(model_dir), str(problems), k=cfg.k, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
        split="heldout", limit=cfg.eval_problems, device=cfg.device, out=dest, progress=True,
    )


def _perplexity(cfg: RunConfig, model_dir: Path, heldout_traces: Path, dest: Path,
                with_corpus: bool) -> dict[str, Any]:
    from ssgr.eval.perplexity import perplexity

    done = _read_json(dest)
    if done is not None:
        return done
    return perplexity(
        str(model_dir), traces=heldout_traces, corpus=cfg.corpus if with_corpus else None,
        device=cfg.device, out=dest, progress=True,
    )


def run(cfg: RunConfig | None = None, **options: Any) -> dict[str, Any]:
    """Run the main job; returns the results (also written to ``OUT/results.json``).

    ``options`` override fields of ``cfg`` (``run(quick=True, out="runs/q")``). Raises
    :class:`~ssgr.errors.InputError` for bad options and the stages' own
    :class:`~ssgr.errors.SSGRError` subclasses for bad input.
    """
    from ssgr.data.outputs import check_output, is_write_failure, write_failure
    from ssgr.models import resolve_model

    cfg = dataclasses.replace(cfg or RunConfig(), **options).resolved()
    model_dir = resolve_model(cfg.model)
    out = check_output(cfg.out, "--out", kind="dir")
    key = run_key(cfg, model_dir)
    with output_lock(out, "--out"):
        try:
            _check_key(out, key, cfg.overwrite)
            claim_files(out, _OWNED)
            write_json_atomic(out / "run_config.json", asdict(cfg))
            write_json_atomic(out / "run_key.json", key)
            return _run_locked(cfg, model_dir, out)
        except OSError as e:
            if not is_write_failure(e):
                raise
            raise write_failure(e) from None


def _run_locked(cfg: RunConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    from ssgr.data.generate import generate
    from ssgr.eval.accuracy import default_traces_path

    t0 = time.perf_counter()
    problems = _freeze_problems(cfg.problems, out / "problems.jsonl")

    traces = out / "traces.jsonl"
    log.info(
        "stage 1/5: generating %d samples x %d calibration problems", cfg.n, cfg.calib_problems
    )
    openai = cfg.generator == "openai"
    generate(
        cfg.model if openai else str(model_dir), problems, traces, generator=cfg.generator,
        server=cfg.server, n=cfg.n, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
        limit=cfg.calib_problems, device=cfg.device, split="calib",
        backend_kwargs={"tokenizer": cfg.tokenizer or str(model_dir)} if openai else None,
    )
    log.info("stage 2/5: selecting calibration sets: %s", ", ".join(cfg.sources))
    calibs = _select_all(cfg, model_dir, traces, problems, out)

    models = {"dense": model_dir}
    prune_reports: dict[str, dict[str, Any]] = {}
    for i, src in enumerate(cfg.sources, 1):
        log.info("stage 3/5: pruning with %s calibration (%d/%d)", src, i, len(cfg.sources))
        dest = out / "pruned" / src
        prune_reports[src] = _prune(cfg, model_dir, calibs[src], dest)
        models[src] = dest

    evals: dict[str, dict[str, Any]] = {}
    (out / "eval").mkdir(exist_ok=True)
    for name, mdir in models.items():
        log.info("stage 4/5: evaluating %s", name)
        evals[name] = _evaluate(cfg, mdir, problems, out / "eval" / f"{name}.json")

    with_corpus = cfg.model != "tiny"  # the tiny model's vocabulary covers arithmetic only
    heldout = default_traces_path(out / "eval" / "dense.json")
    ppls: dict[str, dict[str, Any]] = {}
    (out / "ppl").mkdir(exist_ok=True)
    for name, mdir in models.items():
        log.info("stage 5/5: perplexity of %s", name)
        ppls[name] = _perplexity(cfg, mdir, heldout, out / "ppl" / f"{name}.json", with_corpus)

    rows = {}
    for name in models:
        ov = evals[name]["overall"]
        rows[name] = {
            "accuracy": ov["pass@1"],
            "mean_tokens": ov["mean_response_tokens"],
            "truncation": ov["truncation_rate"],
            "trace_ppl": ppls[name].get("traces", {}).get("ppl"),
            "text_ppl": ppls[name].get("corpus", {}).get("ppl"),
            "by_level": {lvl: v["pass@1"] for lvl, v in evals[name]["by_level"].items()},
            "prune_seconds": prune_reports[name]["totals"]["wall_s"]
            if name in prune_reports
            else None,
            "calib": dict(zip(("sequences", "tokens"), _calib_stats(calibs[name]), strict=True))
            if name in calibs
            else None,
        }
    results = {"config": asdict(cfg), "model_dir": str(model_dir), "rows": rows,
               "wall_s": time.perf_counter() - t0}
    write_json_atomic(out / "results.json", results)
    results["plot"] = str(out / "results.png") if plot_results(results, out / "results.png") \
        else None
    return results


def format_results(results: dict[str, Any]) -> str:
    """The table printed by ``ssgr run``."""
    cfg = results["config"]
    head = (f"{'model':<8} {'calib seqs/tok':>15} {'pass@1':>7} {'mean len':>9} {'trunc':>6} "
            f"{'trace ppl':>10} {'text ppl':>9} {'prune s':>8}")
    lines = [
        f"{cfg['model']}, {cfg['method']} {cfg['sparsity']}, pass@1 over k={cfg['k']} samples on "
        f"{cfg['eval_problems']} held-out problems",
        head, "-" * len(head),
    ]

    def f(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"

    for name, r in results["rows"].items():
        calib = f"{r['calib']['sequences']}/{r['calib']['tokens']}" if r["calib"] else "-"
        lines.append(
            f"{name:<8} {calib:>15} {f(r['accuracy'], '.3f'):>7} {f(r['mean_tokens'], '.1f'):>9} "
            f"{f(r['truncation'], '.3f'):>6} {f(r['trace_ppl'], '.3f'):>10} "
            f"{f(r['text_ppl'], '.1f'):>9} {f(r['prune_seconds'], '.1f'):>8}"
        )
    levels = sorted({lvl for r in results["rows"].values() for lvl in r["by_level"]})
    lines.append("")
    lines.append("pass@1 by difficulty level: " + " ".join(f"{'L' + lvl:>6}" for lvl in levels))
    for name, r in results["rows"].items():
        lines.append(
            f"{name:<28}" + " ".join(f"{f(r['by_level'].get(lvl), '.3f'):>6}" for lvl in levels)
        )
    return "\n".join(lines)


def plot_results(results: dict[str, Any], png: Path) -> bool:
    """Bar chart of pass@1 per model (dense and each calibration source), written atomically
    to ``png``. Returns False (with a WARNING naming the extra to install) when matplotlib is
    not installed."""
    try:
        import matplotlib
    except ImportError:
        from ssgr.errors import missing_extra

        log.warning("%s; results.png not written", missing_extra("matplotlib", "the results plot"))
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["rows"])
    acc = [results["rows"][n]["accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    bars = ax.bar(names, acc, color=["0.5"] + ["C0"] * (len(names) - 1))
    for b, a in zip(bars, acc, strict=True):
        ax.annotate(
            f"{a:.2f}", (b.get_x() + b.get_width() / 2, a), ha="center", va="bottom", fontsize=8
        )
    cfg = results["config"]
    ax.set_ylabel("pass@1 (held-out)")
    ax.set_title(
        f"{cfg['model']}: {cfg['method']} {cfg['sparsity']} by calibration source", fontsize=9
    )
    ax.set_ylim(0, max(1.0, max(acc) * 1.15))
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return True
