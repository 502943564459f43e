"""Perplexity: exact values on a uniform-output model, windowing, traces scoring, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssgr.data.errors import DataError
from ssgr.data.traces import Trace
from ssgr.eval.perplexity import (
    context_length,
    corpus_perplexity,
    filter_traces,
    load_model,
    perplexity,
    traces_perplexity,
)

DOCS = [
    "What is 3 + 4? The answer is 7.",
    "Please reason step by step, and then stop.",
    "12 * 9 = 108",
]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return load_model("tiny", device="cpu")


@pytest.fixture
def uniform(tiny):
    """The tiny model with zero embeddings (tied): every next-token distribution is uniform."""
    import copy

    model, tok = tiny
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.get_input_embeddings().weight.zero_()
        m.get_output_embeddings().weight.zero_()
    return m, tok


def _stream_len(tok, docs):
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    return sum(len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs) + len(sep) * (
        len(docs) - 1
    )


def test_uniform_model_ppl_is_vocab_size_and_windows_count(uniform):
    m, tok = uniform
    vocab = m.config.vocab_size
    n = _stream_len(tok, DOCS)
    r = corpus_perplexity(m, tok, DOCS, window=8, progress=False)
    lone = 1 if n % 8 == 1 else 0  # a last window of one token predicts nothing and is skipped
    windows = math.ceil(n / 8) - lone
    assert r["windows"] == windows and r["window"] == 8
    assert r["tokens"] == n - lone - windows  # the first token of every window is not predicted
    assert r["ppl"] == pytest.approx(vocab, rel=1e-9)


def test_corpus_ppl_matches_manual_log_softmax(tiny):
    m, tok = tiny
    r = corpus_perplexity(m, tok, DOCS, window=16, progress=False)
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for i, d in enumerate(DOCS):
        stream += (sep if i else []) + tok(d, add_special_tokens=False)["input_ids"]
    nll, cnt = 0.0, 0
    for s in range(0, len(stream), 16):
        w = stream[s : s + 16]
        if len(w) < 2:
            continue
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([w])).logits[0].double(), -1)
        for i in range(1, len(w)):
            nll -= float(lp[i - 1, w[i]])
            cnt += 1
    assert r["tokens"] == cnt
    assert r["ppl"] == pytest.approx(math.exp(nll / cnt), rel=1e-6)
    full = corpus_perplexity(m, tok, DOCS, progress=False)  # default window: the model's context
    assert full["windows"] == 1 and full["window"] == m.config.max_position_embeddings


def _trace(prompt, response, reason="stop", correct=True):
    return Trace("p", 0, prompt, response, 0, reason, None, correct, [])


def test_traces_ppl_counts_response_tokens_and_eos(uniform):
    m, tok = uniform
    prompt = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    resp = "<think> 2 + 3 = 5 </think> \\boxed{5}"
    n_resp = len(tok(resp, add_special_tokens=False)["input_ids"])
    r = traces_perplexity(
        m, tok, [_trace(prompt, resp, "stop"), _trace(prompt, resp, "length")], progress=False
    )
    assert r["tokens"] == 2 * n_resp + 1  # EOS only for the sample that stopped by itself
    assert r["ppl"] == pytest.approx(m.config.vocab_size, rel=1e-9)
    assert r["traces"] == 2 and r["cut"] == 0


def test_trained_model_prefers_its_own_format(tiny):
    m, tok = tiny
    prompt = tok.apply_chat_template(
        [
            {
                "role": "user",
                "content": "What is 2 + 3?\nPlease reason step by "
                "step, and put your final answer within \\boxed{}.",
            }
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    good = traces_perplexity(
        m, tok, [_trace(prompt, "<think> 2 + 3 = 5 </think> \\boxed{5}")], progress=False
    )
    bad = traces_perplexity(
        m, tok, [_trace(prompt, "the answer might be nine or so")], progress=False
    )
    assert good["ppl"] < 3.0 < bad["ppl"]


def test_perplexity_end_to_end_and_errors(tmp_path, tiny):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(DOCS))
    traces = tmp_path / "T.jsonl"
    prompt = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    rows = [
        dict(
            problem_id="p",
            sample=i,
            prompt=prompt,
            response="<think> 2 + 3 = 5 </think> \\boxed{5}",
            num_tokens=12,
            finish_reason="stop",
            answer="5",
            correct=bool(i),
            flags=[],
        )
        for i in range(2)
    ]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "PPL.json"
    res = perplexity(
        "tiny",
        corpus=corpus,
        traces=traces,
        traces_filter="correct",
        device="cpu",
        out=out,
        progress=False,
    )
    assert json.loads(out.read_text()) == res
    assert res["traces"]["traces"] == 1 and res["corpus"]["ppl"] > 1.0

    with pytest.raises(DataError, match="needs --corpus"):
        perplexity("tiny")
    with pytest.raises(DataError, match="neither a known corpus"):
        perplexity("tiny", corpus=tmp_path / "missing.txt")
    with pytest.raises(DataError, match="window must be >= 2"):
        context_length(tiny[0], 1)
    with pytest.raises(DataError, match="no traces left"):
        filter_traces([_trace("a", "b", correct=False)], "correct")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"problem_id": "p"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: trace is missing"):
        perplexity("tiny", traces=bad)
    with pytest.raises(FileNotFoundError):
        perplexity(tmp_path / "nope", corpus=corpus)


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_nll_equals_the_whole_sequence_computation(tiny, chunk):
    """#19 item 13: the NLL over chunks of positions equals today's whole-logits computation on
    a short trace (chunk 3: the issue's chunking; chunk 1 and one chunk longer than the trace:
    siblings at both ends)."""
    import torch

    from ssgr.eval.perplexity import _nll_sum

    model, tok = tiny
    ids = tok("12+7=19 and 3*4=12", add_special_tokens=False)["input_ids"]
    start = 4
    x = torch.tensor([ids])
    with torch.inference_mode():
        logits = model(input_ids=x).logits[0, :-1].double()
    ref = torch.nn.functional.cross_entropy(logits[start - 1:], x[0, start:], reduction="sum")
    nll, n = _nll_sum(model, ids, start, chunk=chunk)
    assert n == len(ids) - start
    assert nll == pytest.approx(float(ref), rel=1e-6, abs=1e-9)
