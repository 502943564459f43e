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

Statistics (:mod:`ssgr.eval.stats`): every pass@1 comes with its 95% bootstrap confidence
interval over the held-out problems (a problem's k samples kept together, B = 2000, percentile,
fixed seed), and every calibration source with its difference to ``text`` and to ``sgr`` (when
those ran) with a paired bootstrap CI (paired by problem). Generation cost per source: the
samples, tokens and generation seconds that produced its calibration set (``text`` and ``gold``:
none; ``sgr``, ``ssgr`` and the ablations: all the calibration traces they were selected from),
and for the sources behind the ssgr filter what ``ssgr generate --early-stop`` would have spent
on the same samples (:func:`ssgr.data.generate.early_stop_cost`). ``OUT/generate_cost.json`` keeps
the generation seconds across resumed runs.

Calibration draws (``--calib-seeds S1,S2,...``): selection, pruning and evaluation are repeated
for each seed on the same traces (the seed of the random picks: ``sgr``'s sample per problem,
the subset when more problems pass than ``--num-sequences``, and ``text``'s shuffled windows).
The draw with seed ``--seed`` (the default, and the only draw without ``--calib-seeds``) lives
in ``calib/``, ``pruned/``, ``eval/``, ``ppl/`` as before; every other draw in
``draws/seed-S/{calib,pruned,eval,ppl}``, so draws never share a file and each resumes on its
own. Adding seeds to a finished run reuses its draws. ``results.json`` then also has
``draws`` (each draw's rows) and ``across_draws`` (per source: mean, std, min, max of pass@1).
``ssgr-response`` (in ``--ablations``) prunes with ``ssgr``'s calibration set under
``--calib-tokens response``: only the response tokens feed the Hessians.

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
ABLATIONS = ("easy", "medium", "hard", "short", "long", "no-think", "ssgr-response")
#: Sources that are not a selection strategy: ``name -> (calibration set, --calib-tokens)``.
DERIVED_SOURCES = {"ssgr-response": ("ssgr", "response")}
#: Sources whose calibration set costs no generation (``gold``: the dataset's solutions).
NO_GENERATION = ("text", "gold")
#: Sources the ssgr filter (c <= tau) chooses: ``--early-stop`` would give the same set.
EARLY_STOP_EXACT = ("ssgr", "short", "median", "long", "no-think", "gold", "ssgr-response")
#: Sources every calibration source is compared with (paired by problem).
BASELINES = ("text", "sgr")

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
    ablations: bool = option(
        False, help="add easy, medium, hard, short, long, no-think and ssgr-response")
    calib_seeds: list[int] | None = option(
        None, sep=",", help="calibration draws: repeat selection, pruning and eval for each seed "
        "(default: --seed only)",
    )
    problems: str = option("builtin:arith", help="problems jsonl or builtin:NAME")
    n: int | None = option(None, help="samples per calibration problem")
    calib_problems: int | None = option(None, help="calibration problems to sample")
    eval_problems: int | None = option(None, help="held-out problems to evaluate")
    k: int | None = option(None, help="samples per held-out problem (pass@1 over k)")
    max_new_tokens: int | None = option(None, help="response token limit")
    num_sequences: int | None = option(None, help="calibration sequences per source")
    tau: float = option(0.75, help="SSGR: drop problems with correctness above tau")
    corpus: str = option("news", help="generic text for the text source and text ppl")
    ppl: str = option(
        "all", choices=("all", "traces", "none"),
        help="stage 5's perplexities: on the held-out traces and the --corpus (all; the corpus "
        "only for models with a general vocabulary), the traces only, or none (the table "
        "shows '-')",
    )
    generator: str = option(
        "hf", choices=GENERATORS, deprecated=["--backend"],
        help="generation backend for the calibration traces",
    )
    server: str | None = option(
        None, help="OpenAI-compatible server URL, or several comma-separated (--generator openai; "
        "MODEL is the served name; requests go to the server with the fewest outstanding)"
    )
    concurrency_per_server: int | None = option(
        None, help="--generator openai: most requests in flight on one server (default: no cap "
        "beyond the batch)",
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
        known = (*STRATEGIES, *DERIVED_SOURCES)
        bad = [s for s in sources if s not in known]
        if bad:
            raise InputError(
                f"unknown calibration source(s) {', '.join(bad)}; "
                f"choose from {', '.join(known)}"
            )
        if self.calib_seeds is not None:
            if not self.calib_seeds:
                raise InputError("--calib-seeds is empty; give at least one seed (e.g. 0,1,2)")
            vals["calib_seeds"] = list(dict.fromkeys(int(x) for x in self.calib_seeds))
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
          "results.png", "draws", "generate_cost.json")
#: Settings that do not change any artifact (``calib_seeds``: each draw has its own files; ``ppl``:
#: which perplexities stage 5 computes, each ppl file holding what it measured).
_UNKEYED = ("out", "quick", "overwrite", "ablations", "calib_seeds", "concurrency_per_server",
            "ppl")


def run_key(cfg: RunConfig, model_dir: Path) -> dict[str, Any]:
    """What every artifact of a run depends on: the resolved settings (all but ``out``,
    ``quick``, ``overwrite`` and ``ablations``, which are folded into the sizes and sources,
    ``calib_seeds``, whose draws each live in their own directory, and ``ppl``; ``sources``
    only as whether ``ssgr``'s set caps the others, since each source has its own files), the
    model's content hash and the problems' (sha256 over ids, questions and answers)."""
    import hashlib

    from ssgr.data.problems import load_problems, problem_hash
    from ssgr.models import model_fingerprint

    h = hashlib.sha256()
    for p in load_problems(cfg.problems):
        h.update(f"{p.id}\0{problem_hash(p)}\n".encode())
    settings = {k: v for k, v in asdict(cfg).items() if k not in _UNKEYED}
    # each source has its own files; the others' sets depend only on whether ssgr's set caps
    # them, so adding sources (or --ablations) to a finished run computes just the new ones
    settings[_BUDGET] = _ssgr_caps(settings.pop("sources"))
    return {"settings": settings, "model_sha256": model_fingerprint(model_dir),
            "problems_sha256": h.hexdigest()}


#: Run-key entry: whether ``ssgr``'s set caps the other sources' sequences and ``text``'s tokens.
_BUDGET = "calib_capped_by_ssgr"


def _ssgr_caps(sources: list[str]) -> bool:
    return any(s == "ssgr" or DERIVED_SOURCES.get(s, ("",))[0] == "ssgr" for s in sources)


def _key_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = []
    olds, news = dict(old.get("settings", {})), new["settings"]
    if "sources" in olds:  # a key written before sources were folded into _BUDGET
        olds[_BUDGET] = _ssgr_caps(olds.pop("sources"))
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
                out: Path, seed: int) -> dict[str, Path]:
    """One calibration set per source of one draw (selection seed ``seed``) in ``out/calib``;
    a derived source (``ssgr-response``) maps to its base set's file."""
    from ssgr.data.select import select

    calib_dir = out / "calib"
    calib_dir.mkdir(parents=True, exist_ok=True)
    wanted = [DERIVED_SOURCES[s][0] if s in DERIVED_SOURCES else s for s in cfg.sources]
    order = sorted(dict.fromkeys(wanted), key=lambda s: (s != "ssgr", s == "text"))
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
                problems=str(problems), seed=seed, plot=False, **kw,
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
    for src in cfg.sources:
        if src in DERIVED_SOURCES:
            paths[src] = paths[DERIVED_SOURCES[src][0]]
    return paths


def _prune(cfg: RunConfig, model_dir: Path, calib: Path, dest: Path,
           calib_tokens: str = "all") -> dict[str, Any]:
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
            **({"calib_tokens": calib_tokens} if calib_tokens != "all" else {}),
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

    if cfg.ppl == "none":
        return {}
    with_corpus = with_corpus and cfg.ppl == "all"
    done = _read_json(dest)
    if done is not None and ("corpus" in done or not with_corpus):
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


def draw_dir(out: Path, seed: int, run_seed: int) -> Path:
    """Where the calibration draw with selection seed ``seed`` keeps its ``calib``, ``pruned``,
    ``eval`` and ``ppl``: ``out`` itself for the run's own ``--seed``, else
    ``out/draws/seed-<seed>``."""
    return out if seed == run_seed else out / "draws" / f"seed-{seed}"


def _generate_stage(cfg: RunConfig, model_dir: Path, problems: Path, traces: Path,
                    out: Path) -> dict[str, Any]:
    """Stage 1; returns ``{"seconds", "samples_timed"}`` accumulated over resumed runs in
    ``OUT/generate_cost.json`` (``seconds`` None when part of the traces was written without
    being timed, e.g. by an older ssgr)."""
    from ssgr.data.generate import generate

    cost_path = out / "generate_cost.json"
    cost = _read_json(cost_path) or {"seconds": 0.0, "samples_timed": 0}
    openai = cfg.generator == "openai"
    stats = generate(
        cfg.model if openai else str(model_dir), problems, traces, generator=cfg.generator,
        server=cfg.server, n=cfg.n, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
        limit=cfg.calib_problems, device=cfg.device, split="calib",
        backend_kwargs={"tokenizer": cfg.tokenizer or str(model_dir),
                        "concurrency_per_server": cfg.concurrency_per_server} if openai else None,
    )
    if stats.written or not cost_path.is_file():
        cost = {"seconds": cost["seconds"] + stats.seconds,
                "samples_timed": cost["samples_timed"] + stats.written}
        write_json_atomic(cost_path, cost)
    return cost


def _generation_costs(cfg: RunConfig, traces: Path, gen: dict[str, Any]) -> dict[str, Any]:
    """Per source: the samples, tokens and seconds of generation behind its calibration set,
    and (sources behind the ssgr filter) what ``--early-stop`` would have generated."""
    from ssgr.data.generate import early_stop_cost
    from ssgr.data.traces import read_traces

    ts = [t for t in read_traces(traces) if t.sample < cfg.n]
    samples, tokens = len(ts), sum(t.num_tokens for t in ts)
    seconds = gen["seconds"] if gen.get("samples_timed") == samples else None
    if seconds is None:
        log.warning("%s: %d of %d samples were generated without timing (an earlier ssgr); "
                    "generation seconds are not reported", traces, gen.get("samples_timed", 0),
                    samples)
    early = early_stop_cost(ts, cfg.n, cfg.tau)
    costs: dict[str, Any] = {}
    for src in cfg.sources:
        if src in NO_GENERATION:
            costs[src] = {"samples": 0, "tokens": 0, "seconds": 0.0}
            continue
        costs[src] = {"samples": samples, "tokens": tokens, "seconds": seconds}
        if src in EARLY_STOP_EXACT:
            costs[src]["early_stop"] = early
    return costs


def _run_draw(cfg: RunConfig, model_dir: Path, traces: Path, problems: Path, out: Path,
              seed: int, dense_eval: dict[str, Any], heldout: Path, with_corpus: bool,
              costs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Select, prune, evaluate and score one calibration draw; returns its rows (dense first)."""
    base = draw_dir(out, seed, cfg.seed)
    tag = "" if seed == cfg.seed else f" (draw seed {seed})"
    log.info("stage 2/5: selecting calibration sets%s: %s", tag, ", ".join(cfg.sources))
    calibs = _select_all(cfg, model_dir, traces, problems, base, seed)

    models = {"dense": model_dir}
    prune_reports: dict[str, dict[str, Any]] = {}
    for i, src in enumerate(cfg.sources, 1):
        log.info("stage 3/5: pruning with %s calibration (%d/%d)%s", src, i, len(cfg.sources), tag)
        dest = base / "pruned" / src
        tokens = DERIVED_SOURCES[src][1] if src in DERIVED_SOURCES else "all"
        prune_reports[src] = _prune(cfg, model_dir, calibs[src], dest, tokens)
        models[src] = dest

    evals: dict[str, dict[str, Any]] = {"dense": dense_eval}
    ppls: dict[str, dict[str, Any]] = {}
    (base / "eval").mkdir(parents=True, exist_ok=True)
    (base / "ppl").mkdir(parents=True, exist_ok=True)
    for name, mdir in models.items():
        if name != "dense":
            log.info("stage 4/5: evaluating %s%s", name, tag)
            evals[name] = _evaluate(cfg, mdir, problems, base / "eval" / f"{name}.json")
    for name, mdir in models.items():
        log.info("stage 5/5: perplexity of %s%s", name, tag)
        ppls[name] = _perplexity(cfg, mdir, heldout, out / "ppl" / "dense.json"
                                 if name == "dense" else base / "ppl" / f"{name}.json",
                                 with_corpus)
    return _rows(models, evals, ppls, prune_reports, calibs, costs)


def _rows(models: dict[str, Path], evals: dict[str, dict[str, Any]],
          ppls: dict[str, dict[str, Any]], prune_reports: dict[str, dict[str, Any]],
          calibs: dict[str, Path], costs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from ssgr.eval.accuracy import per_problem_scores
    from ssgr.eval.stats import bootstrap_ci, paired_bootstrap_diff, paired_values

    scores = {name: per_problem_scores(evals[name]) for name in models}
    rows = {}
    for name in models:
        ov = evals[name]["overall"]
        diffs = {}
        if name != "dense":
            for other in BASELINES:
                if other in models and other != name:
                    a, b = paired_values(scores[name], scores[other], f"{name} vs {other}")
                    diffs[other] = paired_bootstrap_diff(a, b)
        rows[name] = {
            "accuracy": ov["pass@1"],
            "accuracy_ci": ov.get("pass@1_ci") or bootstrap_ci(list(scores[name].values())),
            "diff": diffs,
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
            "generation": costs.get(name),
        }
    return rows


def _run_locked(cfg: RunConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    from ssgr.eval.accuracy import default_traces_path
    from ssgr.eval.stats import spread

    t0 = time.perf_counter()
    problems = _freeze_problems(cfg.problems, out / "problems.jsonl")

    traces = out / "traces.jsonl"
    log.info(
        "stage 1/5: generating %d samples x %d calibration problems", cfg.n, cfg.calib_problems
    )
    gen = _generate_stage(cfg, model_dir, problems, traces, out)
    costs = _generation_costs(cfg, traces, gen)

    (out / "eval").mkdir(exist_ok=True)
    (out / "ppl").mkdir(exist_ok=True)
    log.info("stage 4/5: evaluating dense")
    dense_eval = _evaluate(cfg, model_dir, problems, out / "eval" / "dense.json")
    with_corpus = cfg.model != "tiny"  # the tiny model's vocabulary covers arithmetic only
    heldout = default_traces_path(out / "eval" / "dense.json")

    seeds = cfg.calib_seeds or [cfg.seed]
    draws = []
    for seed in seeds:
        rows = _run_draw(cfg, model_dir, traces, problems, out, seed, dense_eval, heldout,
                         with_corpus, costs)
        draws.append({"seed": seed, "dir": str(draw_dir(out, seed, cfg.seed)), "rows": rows})
    results: dict[str, Any] = {"config": asdict(cfg), "model_dir": str(model_dir),
                               "rows": draws[0]["rows"]}
    if len(draws) > 1:
        results["draws"] = draws
        across: dict[str, Any] = {}
        for name in draws[0]["rows"]:
            if name == "dense":
                continue
            across[name] = {
                "accuracy": spread([d["rows"][name]["accuracy"] for d in draws]),
                "diff": {
                    other: spread([d["rows"][name]["diff"][other]["estimate"] for d in draws])
                    for other in draws[0]["rows"][name]["diff"]
                },
            }
        results["across_draws"] = across
    results["wall_s"] = time.perf_counter() - t0
    write_json_atomic(out / "results.json", results)
    results["plot"] = str(out / "results.png") if plot_results(results, out / "results.png") \
        else None
    return results


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"


def _seconds(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_results(results: dict[str, Any]) -> str:
    """The tables printed by ``ssgr run``: accuracy (first draw), paired differences, generation
    cost, pass@1 by level and, with several calibration draws, the spread across draws."""
    from ssgr.eval.stats import format_ci

    cfg = results["config"]
    head = (f"{'model':<13} {'calib seqs/tok':>15} {'pass@1':>7} {'95% CI':>14} {'mean len':>9} "
            f"{'trunc':>6} {'trace ppl':>10} {'text ppl':>9} {'prune s':>8}")
    seeds = cfg.get("calib_seeds") or [cfg.get("seed", 0)]
    lines = [
        f"{cfg['model']}, {cfg['method']} {cfg['sparsity']}, pass@1 over k={cfg['k']} samples on "
        f"{cfg['eval_problems']} held-out problems"
        + (f" (calibration draw seed {seeds[0]} of {len(seeds)})" if len(seeds) > 1 else ""),
        head, "-" * len(head),
    ]
    rows = results["rows"]
    for name, r in rows.items():
        calib = f"{r['calib']['sequences']}/{r['calib']['tokens']}" if r["calib"] else "-"
        ci = r.get("accuracy_ci")
        cis = f"[{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else "-"
        lines.append(
            f"{name:<13} {calib:>15} {_num(r['accuracy'], '.3f'):>7} {cis:>14} "
            f"{_num(r['mean_tokens'], '.1f'):>9} {_num(r['truncation'], '.3f'):>6} "
            f"{_num(r['trace_ppl'], '.3f'):>10} {_num(r['text_ppl'], '.1f'):>9} "
            f"{_num(r['prune_seconds'], '.1f'):>8}"
        )
    others = [b for b in BASELINES if b in rows]
    if others and any(r.get("diff") for r in rows.values()):
        lines.append("")
        lines.append("difference in pass@1, paired by problem (95% bootstrap CI):")
        lines.append(f"{'model':<13} " + " ".join(f"{'vs ' + b:>25}" for b in others))
        for name, r in rows.items():
            if name == "dense":
                continue
            lines.append(f"{name:<13} " + " ".join(
                f"{format_ci(r['diff'].get(b), signed=True):>25}" for b in others))
    if any(r.get("generation") for r in rows.values()):
        lines.append("")
        lines.append("generation behind each calibration set (--early-stop: what it would have "
                     "generated for the same set):")
        lines.append(f"{'model':<13} {'samples':>8} {'tokens':>9} {'gen s':>8} "
                     f"{'early-stop samples':>19} {'tokens':>9}")
        for name, r in rows.items():
            g = r.get("generation")
            if not g:
                continue
            es = g.get("early_stop")
            lines.append(
                f"{name:<13} {g['samples']:>8d} {g['tokens']:>9d} {_seconds(g['seconds']):>8} "
                + (f"{es['samples']:>19d} {es['tokens']:>9d}" if es else f"{'-':>19} {'-':>9}")
            )
    levels = sorted({lvl for r in rows.values() for lvl in r["by_level"]})
    lines.append("")
    lines.append("pass@1 by difficulty level: " + " ".join(f"{'L' + lvl:>6}" for lvl in levels))
    for name, r in rows.items():
        lines.append(
            f"{name:<28}" + " ".join(f"{_num(r['by_level'].get(lvl), '.3f'):>6}" for lvl in levels)
        )
    if results.get("across_draws"):
        draws = results["draws"]
        lines.append("")
        lines.append(f"across {len(draws)} calibration draws (seeds "
                     f"{', '.join(str(d['seed']) for d in draws)}): pass@1 per draw [95% CI], "
                     "mean, std, min, max")
        for name, a in results["across_draws"].items():
            per = "  ".join(
                f"{d['rows'][name]['accuracy']:.3f} [{d['rows'][name]['accuracy_ci']['lo']:.3f},"
                f" {d['rows'][name]['accuracy_ci']['hi']:.3f}]" for d in draws)
            s = a["accuracy"]
            lines.append(f"{name:<13} {per}  mean {s['mean']:.3f} std {s['std']:.3f} "
                         f"min {s['min']:.3f} max {s['max']:.3f}")
            for other, sd in a["diff"].items():
                lines.append(f"{'':<13} vs {other}: mean {sd['mean']:+.3f} std {sd['std']:.3f} "
                             f"min {sd['min']:+.3f} max {sd['max']:+.3f}")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], png: Path) -> bool:
    """Bar chart of pass@1 per model (dense and each calibration source, ablations included)
    with 95% bootstrap CI error bars (with several calibration draws: each draw's pass@1 as a
    dot), written atomically to ``png``. Returns False (with a WARNING naming the extra to
    install) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        from ssgr.errors import missing_extra

        log.warning("%s; results.png not written", missing_extra("matplotlib", "the results plot"))
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = list(rows)
    acc = [rows[n]["accuracy"] for n in names]
    cis = [rows[n].get("accuracy_ci") for n in names]
    err = [[a - c["lo"] if c else 0.0 for a, c in zip(acc, cis, strict=True)],
           [c["hi"] - a if c else 0.0 for a, c in zip(acc, cis, strict=True)]]
    main = set(DEFAULT_SOURCES)
    colors = ["0.5" if n == "dense" else "C0" if n in main else "C1" for n in names]
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2, 3.8))
    bars = ax.bar(names, acc, color=colors, yerr=err, capsize=3, ecolor="k")
    for b, a, c in zip(bars, acc, cis, strict=True):
        top = c["hi"] if c else a
        ax.annotate(
            f"{a:.2f}", (b.get_x() + b.get_width() / 2, top), ha="center", va="bottom", fontsize=7
        )
    for d in results.get("draws") or []:
        xs = [i for i, n in enumerate(names) if n in d["rows"] and n != "dense"]
        ax.plot(xs, [d["rows"][names[i]]["accuracy"] for i in xs], "k.", ms=4)
    cfg = results["config"]
    ax.set_ylabel("pass@1 (held-out), 95% CI")
    draws = len(results.get("draws") or [1])
    ax.set_title(
        f"{cfg['model']}: {cfg['method']} {cfg['sparsity']} by calibration source"
        + (f" (bars: first draw; dots: {draws} draws)" if draws > 1 else "")
        + ("; orange: ablations" if any(c == "C1" for c in colors) else ""),
        fontsize=9,
    )
    ax.set_ylim(0, max(1.0, max(c["hi"] if c else a for a, c in zip(acc, cis, strict=True)) * 1.15))
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return True
