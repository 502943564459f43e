"""Write the README's model compatibility table from the tests that pass.

Usage::

    python benchmarks/compat_table.py [--readme README.md] [--tests tests] [--check]
                                      [--print] [-- PYTEST_ARGS ...]

Runs the tests marked ``@pytest.mark.compat(family=..., order=..., method=...)`` (``pytest -m
compat``, in-process, with a small plugin that records each test's compat marks at collection and
its outcome), and writes a family x order x method table between ``<!-- compat-table:start -->``
and ``<!-- compat-table:end -->`` in the README: "tested" where at least one passing test runs
that combination, blank elsewhere. A combination whose only tests failed or were skipped is not
"tested". When a compat test fails the README is left unchanged and the exit status is 1 (the
failures are listed); ``--check`` exits 1 when the README's table differs from the fresh one,
without writing. ``family`` is the transformers ``model_type`` (``config.json``), ``order`` is
``--sequential`` (layer, module), ``method`` is ``--method``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("compat_table")

START = "<!-- compat-table:start -->"
END = "<!-- compat-table:end -->"
ORDERS = ("layer", "module")
METHODS = ("sparsegpt", "wanda", "magnitude")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(eq=False)  # pytest registers plugins in a set: hashable by identity
class Recorder:
    """pytest plugin: compat marks per test id at collection, outcome per test id."""

    marks: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    passed: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            found = []
            for m in item.iter_markers("compat"):
                kw = dict(m.kwargs)
                try:
                    found.append((str(kw["family"]), str(kw["order"]), str(kw["method"])))
                except KeyError as exc:
                    self.errors.append(f"{item.nodeid}: compat mark without {exc.args[0]}=")
                    continue
                if kw["order"] not in ORDERS or kw["method"] not in METHODS:
                    self.errors.append(f"{item.nodeid}: compat order/method {kw} not one of "
                                       f"{ORDERS} / {METHODS}")
            if found:
                self.marks[item.nodeid] = found

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.add(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed.add(report.nodeid)

    def tested(self) -> set[tuple[str, str, str]]:
        """(family, order, method) combinations run by at least one passing test."""
        ok = self.passed - self.failed
        return {c for nodeid, cs in self.marks.items() if nodeid in ok for c in cs}


def render(tested: Iterable[tuple[str, str, str]], note: str = "") -> str:
    """The markdown table: one row per family (sorted), one column per order x method."""
    tested = set(tested)
    families = sorted({f for f, _, _ in tested})
    cols = [(o, m) for o in ORDERS for m in METHODS]
    head = "| family (`model_type`) | " + " | ".join(f"{o}: {m}" for o, m in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    rows = [f"| {f} | " + " | ".join("tested" if (f, o, m) in tested else "" for o, m in cols)
            + " |" for f in families]
    return "\n".join([head, rule, *rows] + ([f"\n{note}"] if note else []))


def replace_section(text: str, table: str) -> str:
    """``text`` with the lines between :data:`START` and :data:`END` replaced by ``table``.

    Raises:
        ValueError when the markers are missing or out of order.
    """
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"the README has no '{START}' ... '{END}' section; add the two marker "
                         "lines where the table goes")
    return text[: i + len(START)] + "\n" + table + "\n" + text[j:]


def run_tests(tests: Path, extra: list[str]) -> Recorder:
    """Run ``pytest -m compat`` on ``tests`` (from that directory) with a :class:`Recorder`."""
    import pytest

    rec = Recorder()
    old = Path.cwd()
    os.chdir(tests)
    try:
        code = pytest.main(["-m", "compat", "-q", "-p", "no:cacheprovider", *extra, "."],
                           plugins=[rec])
    finally:
        os.chdir(old)
    if int(code) not in (0, 1):
        rec.errors.append(f"pytest exited with status {int(code)} (internal error, interrupted, "
                          "usage error or no tests collected)")
    elif not rec.marks:
        rec.errors.append(f"no test under {tests} carries a compat mark")
    return rec


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--tests", type=Path, default=ROOT / "tests")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when the README's table is not the fresh one; write nothing")
    p.add_argument("--print", action="store_true", help="print the table; write nothing")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    a = p.parse_args(argv)
    rec = run_tests(a.tests.resolve(), a.pytest_args)
    if rec.errors:
        for e in rec.errors:
            log.error("%s", e)
        return 1
    bad = sorted(rec.failed & set(rec.marks))
    if bad:
        log.error("%d compat test(s) failed; the README is left unchanged:\n  %s", len(bad),
                  "\n  ".join(bad))
        return 1
    import transformers

    n_ok = len(rec.passed & set(rec.marks))
    table = render(rec.tested(), note=(
        f"Generated by `python benchmarks/compat_table.py` from the {n_ok} passing tests\n"
        f"marked `compat` (transformers {transformers.__version__}); blank: no test runs it."))
    if a.print:
        print(table)
        return 0
    text = a.readme.read_text()
    new = replace_section(text, table)
    if a.check:
        if new != text:
            log.error("%s: the compatibility table is out of date; run python "
                      "benchmarks/compat_table.py", a.readme)
            return 1
        return 0
    if new != text:
        from ssgr.io import write_text_atomic

        write_text_atomic(a.readme, new)
    log.info("%s: %d families, %d combinations tested", a.readme,
             len({f for f, _, _ in rec.tested()}), len(rec.tested()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
