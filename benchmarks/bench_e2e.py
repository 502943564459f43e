"""End to end: ``ssgr prune`` vs llm-compressor 0.14 ``oneshot`` + ``SparseGPTModifier``, 2:4 on
SmolLM2-135M-Instruct, 32 x 512 tokens of news text, one group.

Each implementation prunes in a fresh process (``bench_prune.py child``) so that its peak RSS is
its own. The time recorded by pytest-benchmark is the prune call measured inside that process
(``prune_s``: ssgr's includes writing the pruned model directory; interpreter start, imports and
the perplexity evaluation are excluded for both). ``extra_info`` holds the peak RSS after the
prune, the held-out perplexity (32768 tokens of the other half of the corpus) and the dense
model's. One round each: the run takes about 4-5 minutes on a 2-core CPU (``SSGR_BENCH_SMOKE=1``:
4 x 128 tokens, a check that it runs).
"""

from __future__ import annotations

import os

import pytest
import torch
from bench_prune import IMPLS, dense_stats, prepare_smollm2, run_child

#: The clock pytest-benchmark reads: advanced by each child's own measurement of its prune call.
_CLOCK = [0.0]


def _child_clock() -> float:
    return _CLOCK[0]


@pytest.fixture(scope="module")
def smollm2_data(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("the CPU end-to-end benchmark (the GPU one is bench_prune.py r1-14b)")
    pytest.importorskip("llmcompressor")
    size = (dict(sequences=4, tokens=128, heldout_tokens=1024)
            if os.environ.get("SSGR_BENCH_SMOKE") else {})
    data = prepare_smollm2(tmp_path_factory.mktemp("e2e"), **size)
    data.update(dense_stats(data))
    return data


@pytest.mark.benchmark(timer=_child_clock)
@pytest.mark.parametrize("impl", IMPLS)
def test_e2e_smollm2(benchmark, smollm2_data, tmp_path, impl):
    data = smollm2_data
    benchmark.group = (f"e2e sparsegpt 2:4 smollm2-135m {data['sequences']}x{data['tokens']} "
                       "tokens cpu")
    out: dict = {}

    def run() -> None:
        out.update(run_child(impl, data, tmp_path / impl))
        _CLOCK[0] += out["prune_s"]

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        op="e2e", impl="llm-compressor" if impl == "llm-compressor" else "ssgr-prune",
        peer=impl == "llm-compressor", peak_rss_bytes=out["peak_rss_bytes"], ppl=out["ppl"],
        dense_ppl=data["dense_ppl"], layer_sparsity=out["layer_sparsity"],
        lm_head_zeros=out["lm_head_zeros"], breakdown_s=out.get("breakdown_s"),
    )
    assert abs(out["layer_sparsity"] - 0.5) < 1e-3  # every decoder Linear exactly 2:4
    # SmolLM2's dense lm_head (tied to the embeddings) has ~1% exact zeros; neither side prunes it
    assert out["lm_head_zeros"] - data["dense_lm_head_zeros"] < 1e-3, "lm_head was pruned"
    assert out["ppl"] > data["dense_ppl"]
