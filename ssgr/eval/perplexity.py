"""``ssgr ppl``: perplexity on a text corpus and on held-out self-generated traces.

Both numbers are token-level: ``exp(total NLL / predicted tokens)``, summed in float64.

* Corpus (:func:`corpus_perplexity`): the documents (see :func:`ssgr.data.corpus.load_corpus`)
  are tokenized one by one without special tokens and joined with the tokens of ``"\\n\\n"``
  into one stream, which is cut into non-overlapping windows of the model's context
  (``max_position_embeddings``, or ``window``); each window is scored on its own, unpadded, and
  every token but the first of a window is predicted (the WikiText convention without stride).
* Traces (:func:`traces_perplexity`): for every line of a TRACES.jsonl (e.g. the one ``ssgr eval``
  writes for held-out problems) the response tokens are scored given the prompt tokens: prompt
  and response are tokenized separately, as generation saw them, plus the EOS token when the
  sample stopped by itself. Sequences longer than the context are cut at the context (counted).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssgr.data.errors import DataError
from ssgr.data.traces import Trace

logger = logging.getLogger(__name__)

TRACE_FILTERS = ("all", "correct")


def load_model(
    model: str | os.PathLike[str], device: str | None = None, dtype: str | None = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``tiny``, ``smollm2`` or a model directory, in eval mode."""
    from ssgr.models import load_model as _load
    from ssgr.models import resolve_model

    return _load(resolve_model(model), device, dtype)


def context_length(model: Any, window: int | None = None) -> int:
    """The scoring window: ``window`` (capped at the model's positions) or the model's context."""
    ctx = getattr(model.config, "max_position_embeddings", None) or 2048
    if window is not None:
        if window < 2:
            raise DataError(f"--window must be >= 2, got {window}")
        ctx = min(ctx, window)
    return int(ctx)


#: Positions whose logits are held at once by :func:`_nll_sum` (memory: CHUNK x vocab float64).
NLL_CHUNK = 1024


def _split_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output head) of a causal LM whose logits are exactly ``head(last hidden
    state)``, else None (models that scale or soft-cap their logits are scored whole)."""
    cfg = model.config
    if any(getattr(cfg, k, None) not in (None, 1, 1.0)
           for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = model.get_output_embeddings()
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def _nll_sum(model: Any, ids: Sequence[int], start: int,
             chunk: int = NLL_CHUNK) -> tuple[float, int]:
    """Summed NLL (float64) of tokens ``ids[start:]`` given their prefix; ids: one unpadded
    sequence.

    The decoder runs once; the output head, the float64 log-softmax and the NLL are computed
    over ``chunk`` positions at a time, so memory is one ``[chunk, vocab]`` block, not the
    whole ``[T, vocab]`` logits (a 32k-token trace with a 152k vocabulary would need ~40 GB).
    """
    import torch

    dev = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=dev)  # [1, T]
    targets = x[0, 1:]
    first = max(start, 1) - 1
    parts = _split_head(model)
    with torch.inference_mode():
        if parts is None:
            logits = model(input_ids=x).logits[0, :-1].double()  # [T-1, V]
            nll = torch.nn.functional.cross_entropy(
                logits[first:], targets[first:], reduction="sum"
            )
            return float(nll), int(targets.numel() - first)
        decoder, head = parts
        hidden = decoder(input_ids=x).last_hidden_state[0, :-1]  # [T-1, H]
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for a in range(first, targets.numel(), chunk):
            logits = head(hidden[a : a + chunk]).double()  # [<=chunk, V]
            total += torch.nn.functional.cross_entropy(
                logits, targets[a : a + chunk], reduction="sum"
            )
    return float(total), int(targets.numel() - first)


def _result(nll: float, tokens: int, **extra: Any) -> dict[str, Any]:
    if tokens == 0:
        raise DataError("nothing to score: no predicted tokens")
    return {"ppl": math.exp(nll / tokens), "nll_per_token": nll / tokens, "tokens": tokens, **extra}


def corpus_perplexity(model: Any, tokenizer: Any, docs: Sequence[str], window: int | None = None,
                      max_tokens: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Token-level perplexity of ``docs`` in non-overlapping windows (see the module docstring).

    ``max_tokens`` keeps only the first that many tokens of the joined stream.
    """
    from tqdm.auto import tqdm

    if not docs:
        raise DataError("the corpus has no documents")
    ctx = context_length(model, window)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for i, d in enumerate(docs):
        if i:
            stream += sep
        stream += tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"]
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        if max_tokens < 2:
            raise DataError(f"--max-tokens must be >= 2, got {max_tokens}")
        stream = stream[:max_tokens]
    nll, n, windows = 0.0, 0, 0
    starts = [s for s in range(0, len(stream), ctx) if len(stream[s : s + ctx]) >= 2]
    for s in tqdm(starts, desc="ppl corpus", unit="window", disable=not progress):
        a, b = _nll_sum(model, stream[s : s + ctx], 1)
        nll, n, windows = nll + a, n + b, windows + 1
    return _result(nll, n, windows=windows, window=ctx, documents=len(docs))


def filter_traces(traces: Sequence[Trace], which: str = "all") -> list[Trace]:
    """``all`` traces or only the ``correct`` ones."""
    if which not in TRACE_FILTERS:
        raise DataError(
            f"unknown traces filter {which!r}; choose one of {', '.join(TRACE_FILTERS)}"
        )
    out = list(traces) if which == "all" else [t for t in traces if t.correct]
    if not out:
        raise DataError(f"no traces left with filter {which!r}")
    return out


def traces_perplexity(
    model: Any,
    tokenizer: Any,
    traces: Sequence[Trace],
    window: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Token-level perplexity of the responses of ``traces`` given their prompts."""
    from tqdm.auto import tqdm

    if not traces:
        raise DataError("no traces to score")
    ctx = context_length(model, window)
    eos = tokenizer.eos_token_id
    nll, n, cut, skipped = 0.0, 0, 0, 0
    for t in tqdm(traces, desc="ppl traces", unit="trace", disable=not progress):
        p = tokenizer(t.prompt, add_special_tokens=False, verbose=False)["input_ids"]
        r = tokenizer(t.response, add_special_tokens=False, verbose=False)["input_ids"]
        if t.finish_reason == "stop" and eos is not None:
            r = r + [eos]
        ids = p + r
        if len(ids) > ctx:
            cut += 1
            ids = ids[:ctx]
        if not r or len(p) >= len(ids) or not p:
            skipped += 1
            continue
        a, b = _nll_sum(model, ids, len(p))
        nll, n = nll + a, n + b
    if cut:
        logger.warning(
            "%d of %d traces were longer than the %d-token context and were cut",
            cut,
            len(traces),
            ctx,
        )
    return _result(nll, n, traces=len(traces) - skipped, cut=cut, skipped=skipped, window=ctx)


def perplexity(
    model: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    traces: str | os.PathLike[str] | None = None,
    traces_filter: str = "all",
    window: int | None = None,
    max_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of ``model`` on a ``corpus`` (name or file) and/or a ``traces`` file."""
    from ssgr.data.corpus import load_corpus
    from ssgr.data.traces import read_traces
    from ssgr.io import write_json_atomic

    if corpus is None and traces is None:
        raise DataError("ppl needs --corpus NAME|FILE and/or --traces TRACES.jsonl")
    if out is not None:
        from ssgr.data.outputs import check_output

        check_output(out)
    docs = load_corpus(corpus) if corpus is not None else None
    trs = filter_traces(read_traces(traces), traces_filter) if traces is not None else None
    m, tok = load_model(model, device, dtype)
    result: dict[str, Any] = {"model": str(model)}
    if docs is not None:
        result["corpus"] = {
            "name": str(corpus),
            **corpus_perplexity(m, tok, docs, window, max_tokens, progress),
        }
    if trs is not None:
        result["traces"] = {"file": str(traces), "filter": traces_filter,
                            **traces_perplexity(m, tok, trs, window, progress)}
    if out is not None:
        write_json_atomic(Path(out), result)
        logger.info("wrote %s", out)
    return result


def format_ppl(result: dict[str, Any]) -> str:
    """One line per scored source: name, perplexity, tokens."""
    lines = []
    if "corpus" in result:
        c = result["corpus"]
        lines.append(f"corpus {c['name']}: ppl {c['ppl']:.3f} over {c['tokens']} tokens "
                     f"({c['windows']} windows of {c['window']})")
    if "traces" in result:
        t = result["traces"]
        lines.append(f"traces {t['file']} ({t['filter']}): ppl {t['ppl']:.3f} over {t['tokens']} "
                     f"response tokens of {t['traces']} traces")
    return "\n".join(lines)
