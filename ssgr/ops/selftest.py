"""Every backend against the reference: the first-use self-check and ``ssgr selftest``.

:func:`check_implementation` runs one implementation of one op on a fixed case (seeded, built on
the CPU and moved to the device) next to the reference and a float64 oracle, with the tolerance
rule of the op tests:

* ``hessian`` and ``sparsegpt`` (float results): the implementation's error against the float64
  oracle (the reference run in float64) is at most ``2 x`` the reference's own error plus a few
  ulps of the computation dtype (:data:`SLACK_ULPS`); errors are max-abs, relative to the
  oracle's largest entry. SparseGPT's error is taken on the rows whose masks agree with the
  oracle's (a decision flipped at a near-tie changes that row's later compensation), its loss
  the same way, and its masks may differ from the reference's only at near-ties
  (:func:`near_tie_allowed`).
* ``nm_mask`` and ``topk_mask`` (selections from the same scores, with ties): equal to the
  reference's masks, entry for entry.

The registry (:mod:`ssgr.ops._registry`) runs :func:`check_implementation` at the ``small``
size the first time an implementation other than the reference is picked for an op on a device
type and dtype; ``ssgr selftest`` (:func:`run_selftest`) runs the whole matrix, op x available
backend x dtype, at small and real shapes, prints a table and fails on any failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ssgr.errors import InputError, SSGRError
from ssgr.options import add_options, from_args, option

log = logging.getLogger(__name__)

#: The near-tie rule: two implementations that factor H in different orders (or precisions) can
#: decide a weight differently only where its score ties another one's to rounding. Such flips
#: are rare: at most this fraction of the entries, and never more than one decision (2 entries:
#: the pair that swapped) below 1 / NEAR_TIE_FRACTION entries. A wrong kernel flips far more.
NEAR_TIE_FRACTION = 1e-4
#: Slack of the float comparisons in ulps (``torch.finfo(dtype).eps``) of the computation dtype,
#: relative to the oracle's largest entry: ~1e-6 for float32, the op tests' slack.
SLACK_ULPS = 8
#: The ops the self-check and ``ssgr selftest`` cover (``wanda_scores`` has only a reference).
CHECKED_OPS: tuple[str, ...] = ("hessian", "sparsegpt", "nm_mask", "topk_mask")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
    "float64": torch.float64,
}
#: Shapes per op and size: ``small`` (the first-use check; well under a second on a CPU),
#: ``real`` (R1-Distill-Qwen-14B: a 32768-token Hessian chunk at d=5120, a 13824 x 5120 OBS).
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "small": {"hessian": (96, 256), "sparsegpt": (32, 192, 128), "nm_mask": (64, 128),
              "topk_mask": (64, 96)},
    "real": {"hessian": (32768, 5120), "sparsegpt": (13824, 5120, 128),
             "nm_mask": (13824, 5120), "topk_mask": (13824, 5120)},
}
_SEED = 1234


def near_tie_allowed(numel: int) -> int:
    """Mask entries that may differ between two correct implementations of a SparseGPT prune
    of ``numel`` weights (the near-tie rule, :data:`NEAR_TIE_FRACTION`)."""
    return max(2, int(NEAR_TIE_FRACTION * numel))


@dataclass
class CheckResult:
    """Outcome of :func:`check_implementation`.

    ok: the implementation passed. error, bound: the worst part's measured error and its bound
    (relative max-abs error for float results, fraction of differing entries for masks).
    detail: what was compared, or what failed. seconds, ref_seconds: wall time of the
    implementation's and the reference's runs (device synchronised).
    """

    ok: bool
    error: float
    bound: float
    detail: str
    seconds: float = 0.0
    ref_seconds: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _slack(dtype: torch.dtype) -> float:
    return SLACK_ULPS * torch.finfo(dtype).eps


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(_SEED)


def _worst(parts: list[tuple[str, float, float]]) -> tuple[str, float, float]:
    """The part with the largest error / bound ratio (``(name, error, bound)``)."""
    return max(parts, key=lambda p: p[1] / p[2] if p[2] > 0 else (float("inf") if p[1] else 0))


def _float_result(parts: list[tuple[str, float, float]], what: str) -> CheckResult:
    name, err, bound = _worst(parts)
    ok = all(e <= b for _, e, b in parts)
    detail = what if ok else f"{what}: {name} error {err:.3g} exceeds {bound:.3g}"
    return CheckResult(ok, err, bound, detail)


# ------------------------------------------------------------------------------------ the cases


def _hessian_case(fn: Callable, ref_fn: Callable, device: torch.device, dtype: torch.dtype,
                  shape: tuple[int, ...]) -> CheckResult:
    tokens, d = shape
    g = _gen()
    hdtype = torch.float64 if dtype == torch.float64 else torch.float32
    X = torch.randn(tokens, d, generator=g).to(device=device, dtype=dtype)
    A = torch.randn(16, d, generator=g, dtype=torch.float64)
    H0 = (A.T @ A / 16).to(device=device, dtype=hdtype)  # symmetric, as every accumulated H
    out = H0.clone()
    _, secs = _timed(device, lambda: fn(out, X))
    ref = H0.clone()
    _, ref_secs = _timed(device, lambda: ref_fn(ref, X))
    oracle = H0.double()
    ref_fn(oracle, X)
    scale = oracle.abs().max().item() or 1.0
    err = (out.double() - oracle).abs().max().item() / scale
    err_ref = (ref.double() - oracle).abs().max().item() / scale
    res = _float_result([("H", err, 2 * err_ref + _slack(hdtype))],
                        f"H += X^T X, X[{tokens}, {d}] {str(dtype).removeprefix('torch.')}")
    res.seconds, res.ref_seconds = secs, ref_secs
    return res


def _random_hessian(c: int, g: torch.Generator) -> torch.Tensor:
    """``X^T X / t`` (float64, CPU) of correlated activations ``X[3c, c]``."""
    t = 3 * c
    X = torch.randn(t, c, generator=g, dtype=torch.float64)
    X = X @ (torch.randn(c, c, generator=g, dtype=torch.float64) * 0.3
             + torch.eye(c, dtype=torch.float64))
    return X.T @ X / t


#: SparseGPT patterns of the check, as the implementations take them: (sparsity, n_prune, m).
SPARSEGPT_PATTERNS: tuple[tuple[float, int, int], ...] = ((0.5, 0, 0), (0.0, 2, 4))


def _sparsegpt_case(fn: Callable, ref_fn: Callable, device: torch.device, dtype: torch.dtype,
                    shape: tuple[int, ...]) -> CheckResult:
    rows, cols, bs = shape
    g = _gen()
    W = torch.randn(rows, cols, generator=g).to(device=device, dtype=dtype)
    hd = torch.float64 if dtype == torch.float64 else torch.float32
    H = _random_hessian(cols, g).to(device=device, dtype=hd)
    comp = torch.float64 if torch.float64 in (W.dtype, H.dtype) else torch.float32
    parts: list[tuple[str, float, float]] = []
    secs = ref_secs = 0.0
    bad: list[str] = []
    for sparsity, n_prune, m in SPARSEGPT_PATTERNS:
        pat = f"{m - n_prune}:{m}" if m else f"{sparsity:g}"
        args = (sparsity, n_prune, m, bs, 0.01)
        out, s = _timed(device, lambda a=args: fn(W, H, *a))
        ref, rs = _timed(device, lambda a=args: ref_fn(W, H, *a))
        secs, ref_secs = secs + s, ref_secs + rs
        oracle = ref_fn(W.double(), H.double(), *args)
        q, keep, loss, damping = out
        rq, rkeep, rloss, _ = ref
        oq, okeep, oloss, odamping = oracle
        if damping != odamping:
            bad.append(f"{pat}: damping {damping:g} != {odamping:g}")
        mism = int((keep != rkeep).sum())
        allowed = near_tie_allowed(keep.numel())
        parts.append((f"{pat} mask", mism / keep.numel(), allowed / keep.numel()))
        if mism > allowed:
            bad.append(f"{pat}: {mism} mask entries differ from the reference's "
                       f"(near-tie rule allows {allowed})")
        agree = ~((keep != okeep) | (rkeep != okeep)).any(1)
        scale = oq.abs().max().item() or 1.0
        err = (q.double() - oq)[agree].abs().max().item() / scale if agree.any() else 0.0
        err_ref = (rq.double() - oq)[agree].abs().max().item() / scale if agree.any() else 0.0
        parts.append((f"{pat} weight", err, 2 * err_ref + _slack(comp)))
        lscale = abs(oloss) or 1.0
        parts.append((f"{pat} loss", abs(loss - oloss) / lscale,
                      2 * abs(rloss - oloss) / lscale + _slack(comp)))
    what = (f"W[{rows}, {cols}] {str(dtype).removeprefix('torch.')}, blocksize {bs}, "
            "0.5 and 2:4")
    res = _float_result(parts, what)
    if bad:
        res.ok, res.detail = False, f"{what}: " + "; ".join(bad)
    res.seconds, res.ref_seconds = secs, ref_secs
    return res


def _scores(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random scores with many exact ties (half the rows from 5 values), so the tie rules are
    checked too."""
    g = _gen()
    r, c = shape
    s = torch.randn(r, c, generator=g, dtype=torch.float64)
    s[: r // 2] = torch.randint(0, 5, (r // 2, c), generator=g).double()
    return s.to(device=device, dtype=dtype)


def _mask_result(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], what: str, secs: float,
                 ref_secs: float) -> CheckResult:
    bad = []
    worst = 0.0
    for name, out, ref in pairs:
        if out.shape != ref.shape or out.dtype != torch.bool:
            bad.append(f"{name}: got {out.dtype} {tuple(out.shape)}, expected bool "
                       f"{tuple(ref.shape)}")
            worst = 1.0
            continue
        mism = int((out != ref).sum())
        worst = max(worst, mism / max(1, ref.numel()))
        if mism:
            bad.append(f"{name}: {mism} of {ref.numel()} entries differ from the reference")
    detail = what if not bad else f"{what}: " + "; ".join(bad)
    return CheckResult(not bad, worst, 0.0, detail, secs, ref_secs)


def _nm_case(fn: Callable, ref_fn: Callable, device: torch.device, dtype: torch.dtype,
             shape: tuple[int, ...]) -> CheckResult:
    s = _scores(shape, dtype, device)
    pairs, secs, ref_secs = [], 0.0, 0.0
    for n, m in ((2, 4), (4, 8)):
        out, t = _timed(device, lambda n=n, m=m: fn(s, n, m))
        ref, rt = _timed(device, lambda n=n, m=m: ref_fn(s, n, m))
        pairs.append((f"{n}:{m}", out, ref))
        secs, ref_secs = secs + t, ref_secs + rt
    what = f"scores[{shape[0]}, {shape[1]}] {str(dtype).removeprefix('torch.')}, 2:4 and 4:8"
    return _mask_result(pairs, what, secs, ref_secs)


def _topk_case(fn: Callable, ref_fn: Callable, device: torch.device, dtype: torch.dtype,
               shape: tuple[int, ...]) -> CheckResult:
    s = _scores(shape, dtype, device)
    pairs, secs, ref_secs = [], 0.0, 0.0
    for per in ("row", "layer"):
        k = int((shape[1] if per == "row" else s.numel()) * 0.5)
        out, t = _timed(device, lambda k=k, per=per: fn(s, k, per))
        ref, rt = _timed(device, lambda k=k, per=per: ref_fn(s, k, per))
        pairs.append((f"per {per}", out, ref))
        secs, ref_secs = secs + t, ref_secs + rt
    what = (f"scores[{shape[0]}, {shape[1]}] {str(dtype).removeprefix('torch.')}, 0.5 per row "
            "and per layer")
    return _mask_result(pairs, what, secs, ref_secs)


_CASES: dict[str, Callable[..., CheckResult]] = {
    "hessian": _hessian_case, "sparsegpt": _sparsegpt_case, "nm_mask": _nm_case,
    "topk_mask": _topk_case,
}


def case_call(op: str, dtype: torch.dtype, shape: tuple[int, ...]) -> dict[str, Any]:
    """The call properties (see :func:`ssgr.ops._registry.resolve`) of the check case of ``op``
    at ``dtype`` and ``shape``: what an implementation's ``supports`` is asked before it runs."""
    if op == "hessian":
        hd = torch.float64 if dtype == torch.float64 else torch.float32
        return dict(dtype=dtype, H_dtype=hd, d=shape[1], tokens=shape[0])
    if op == "sparsegpt":
        hd = torch.float64 if dtype == torch.float64 else torch.float32
        return dict(dtype=dtype, H_dtype=hd, rows=shape[0], cols=shape[1], blocksize=shape[2],
                    n=2, m=4)
    if op == "nm_mask":
        return dict(dtype=dtype, rows=shape[0], cols=shape[1], n=4, m=8)
    return dict(dtype=dtype, rows=shape[0], cols=shape[1], per="row")


def check_implementation(
    op: str, fn: Callable, ref_fn: Callable, device: torch.device | str, dtype: torch.dtype,
    size: str = "small",
) -> CheckResult:
    """Run ``fn`` (an implementation of ``op``, called with the op's internal signature) on the
    fixed case of ``op`` at ``size`` on ``device`` in ``dtype``, next to ``ref_fn`` (the
    reference implementation, called directly: the check never dispatches) and the float64
    oracle. Inputs are seeded and built on the CPU (the global RNG is not touched).

    Returns:
        :class:`CheckResult` (ok, worst error and its bound, detail, timings).
    Raises:
        whatever ``fn`` raises (the registry counts a crash as a failure); ValueError for an op
        without a check case.
    """
    if op not in _CASES:
        raise ValueError(f"no self-check case for op {op!r}; checked ops: {CHECKED_OPS}")
    with torch.no_grad():
        return _CASES[op](fn, ref_fn, torch.device(device), dtype, SHAPES[size][op])


# ------------------------------------------------------------------------------- ssgr selftest


@dataclass
class SelftestConfig:
    """Options of ``ssgr selftest`` (also :func:`run_selftest`'s argument)."""

    device: str | None = option(
        None, help="device to test: cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    ops: list[str] = option(
        default_factory=lambda: list(CHECKED_OPS), flag="--op", choices=CHECKED_OPS,
        help="ops to test")
    backends: list[str] = option(
        default_factory=list, flag="--backend", choices=("cpu", "triton", "cuda"),
        help="backends to test (default: every available one for the device; on CPU tensors "
             "triton, which needs TRITON_INTERPRET=1 there, only when named)")
    dtypes: list[str] = option(
        default_factory=list, flag="--dtype", choices=tuple(DTYPES),
        help="dtypes to test (default: every dtype each backend takes)")
    sizes: str | None = option(
        None, choices=("small", "real", "all"),
        help="small shapes, real ones (a 32768-token Hessian chunk at d=5120, a 13824x5120 "
             "OBS) or both (default: small on CPU, all on CUDA)")


@dataclass
class SelftestRow:
    """One line of the ``ssgr selftest`` table."""

    op: str
    backend: str
    device: str
    dtype: str
    shape: str
    status: str  # "ok", "FAIL", "skip"
    error: float | None = None
    bound: float | None = None
    seconds: float | None = None
    ref_seconds: float | None = None
    detail: str = ""


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _backends_for(op: str, device: torch.device, named: list[str]) -> list[tuple[str, str | None]]:
    """``[(backend, None or why it is not run)]`` for ``op`` on ``device``."""
    from ._registry import implementation

    out = []
    for name in ("cpu", "triton", "cuda"):
        impl = implementation(op, name)
        if impl is None or (named and name not in named):
            continue
        if name == "triton" and device.type == "cpu" and name not in named:
            continue  # the interpreter: only when asked for
        if device.type not in impl.devices():
            continue  # e.g. cuda on CPU tensors: never a candidate there
        out.append((name, impl.probe()))
    return out


def selftest_rows(cfg: SelftestConfig) -> list[SelftestRow]:
    """Run the ``ssgr selftest`` matrix of ``cfg``: one row per op x backend x dtype x size
    (a backend that cannot run here, or does not take a dtype, is one ``skip`` row).

    Raises:
        InputError: an unknown device, op, backend, dtype or size.
    """
    from ._registry import implementation

    try:
        device = torch.device(cfg.device or _default_device())
    except RuntimeError as exc:
        raise InputError(f"--device {cfg.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here")
    for what, vals, known in (("op", cfg.ops, CHECKED_OPS), ("dtype", cfg.dtypes, DTYPES),
                              ("backend", cfg.backends, ("cpu", "triton", "cuda"))):
        unknown = [v for v in vals if v not in known]
        if unknown:
            raise InputError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    sizes = cfg.sizes or ("small" if device.type == "cpu" else "all")
    if sizes not in ("small", "real", "all"):
        raise InputError(f"sizes must be small, real or all, got {sizes!r}")
    size_list = ["small", "real"] if sizes == "all" else [sizes]
    dtypes = [DTYPES[d] for d in (cfg.dtypes or list(DTYPES))]
    rows: list[SelftestRow] = []
    for op in cfg.ops:
        ref = implementation(op, "reference")
        for backend, reason in _backends_for(op, device, cfg.backends):
            if reason is not None:
                rows.append(SelftestRow(op, backend, device.type, "-", "-", "skip",
                                        detail=reason))
                continue
            impl = implementation(op, backend)
            for dtype in dtypes:
                dname = str(dtype).removeprefix("torch.")
                for size in size_list:
                    shape = SHAPES[size][op]
                    shape_s = "x".join(map(str, shape[:2]))
                    why = impl.supports(**case_call(op, dtype, shape))
                    if why is not None:
                        if size == size_list[0]:
                            rows.append(SelftestRow(op, backend, device.type, dname, shape_s,
                                                    "skip", detail=why))
                        continue
                    rows.append(_run_one(op, backend, impl.fn, ref.fn, device, dtype, size,
                                         shape_s))
    return rows


def _run_one(op: str, backend: str, fn: Callable, ref_fn: Callable, device: torch.device,
             dtype: torch.dtype, size: str, shape_s: str) -> SelftestRow:
    dname = str(dtype).removeprefix("torch.")
    try:
        res = check_implementation(op, fn, ref_fn, device, dtype, size)
    except Exception as exc:  # a crash is a failed row, and the table goes on
        log.debug("selftest %s/%s %s crashed", op, backend, dname, exc_info=True)
        return SelftestRow(op, backend, device.type, dname, shape_s, "FAIL",
                           detail=f"crashed: {type(exc).__name__}: {exc}")
    return SelftestRow(op, backend, device.type, dname, shape_s, "ok" if res.ok else "FAIL",
                       res.error, res.bound, res.seconds, res.ref_seconds, res.detail)


def format_rows(rows: list[SelftestRow]) -> str:
    """The ``ssgr selftest`` table: op, backend, device, dtype, shape, error vs bound, time of
    the backend and of the reference (ms), status; failure details below it."""
    head = (f"{'op':<10} {'backend':<8} {'device':<7} {'dtype':<9} {'shape':<11} "
            f"{'error':>9} {'bound':>9} {'ms':>9} {'ref ms':>9}  status")
    lines = [head, "-" * len(head)]
    notes = []
    for r in rows:
        def num(v: float | None, fmt: str) -> str:
            return format(v, fmt) if v is not None else "-"

        lines.append(
            f"{r.op:<10} {r.backend:<8} {r.device:<7} {r.dtype:<9} {r.shape:<11} "
            f"{num(r.error, '.2e'):>9} {num(r.bound, '.2e'):>9} "
            f"{num(None if r.seconds is None else 1e3 * r.seconds, '.1f'):>9} "
            f"{num(None if r.ref_seconds is None else 1e3 * r.ref_seconds, '.1f'):>9}  {r.status}"
        )
        if r.status != "ok":
            notes.append(f"{r.op}/{r.backend} {r.dtype} {r.shape}: {r.detail}")
    fails = sum(r.status == "FAIL" for r in rows)
    ran = sum(r.status != "skip" for r in rows)
    lines.append(f"{ran} checks, {fails} failed, {len(rows) - ran} skipped "
                 "(error: max-abs vs the float64 oracle relative to its largest entry; masks: "
                 "fraction of entries differing from the reference)")
    lines += [f"  {n}" for n in notes]
    return "\n".join(lines)


def run_selftest(cfg: SelftestConfig) -> int:
    """``ssgr selftest``: run the matrix, print the table to stdout; 0 when every check passed
    (and at least one ran), 1 otherwise.

    Raises:
        InputError: an unknown device, op, backend, dtype or size.
    """
    rows = selftest_rows(cfg)
    sys.stdout.write(format_rows(rows) + "\n")
    if not any(r.status != "skip" for r in rows):
        log.error("ssgr selftest: no backend other than the reference can run here; nothing "
                  "was checked (ssgr info says why)")
        return 1
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The ``selftest`` options, built from :class:`SelftestConfig`."""
    add_options(s, SelftestConfig)


def run(args: argparse.Namespace) -> int:
    """Run ``ssgr selftest`` from parsed arguments (see :func:`run_selftest`)."""
    return run_selftest(from_args(SelftestConfig, args))


def register(subparsers) -> None:
    """Add the ``selftest`` subcommand to ``ssgr``'s subparsers."""
    s = subparsers.add_parser(
        "selftest", help="every backend against the reference on this machine",
        description="Runs every op x available backend x dtype against the reference and a "
                    "float64 oracle, prints a table (error vs bound, time) and exits non-zero "
                    "on any failure. Run it first on a new GPU.")
    add_arguments(s)
    s.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """``python -m ssgr.ops.selftest``: the same command outside the ``ssgr`` entry point
    (exit status 2 on bad options, 1 on a failed check)."""
    p = argparse.ArgumentParser(prog="python -m ssgr.ops.selftest", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0, help="DEBUG logging")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except SSGRError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CHECKED_OPS", "NEAR_TIE_FRACTION", "CheckResult", "SelftestConfig", "SelftestRow",
    "check_implementation", "format_rows", "near_tie_allowed", "register", "run_selftest",
    "selftest_rows",
]
