"""``ssgr prune --calib-tokens response``: the prompt runs through the model as context, only the
response positions feed the Hessians and column norms; equal to the reference fed exactly those
positions (SparseGPT: Hessians; Wanda: column norms), combined with an attention_mask, and bad
lines refused with file:line."""

from __future__ import annotations

import json

import pytest
import torch
from _prune_helpers import naive_prune, state, tiny_model

from ssgr.prune.calib import CalibError, load_calibration
from ssgr.prune.engine import PruneConfig, prune_model
from ssgr.prune.errors import PruneError
from ssgr.prune.pattern import parse_pattern

LENGTHS = (20, 33, 48, 9)
PROMPTS = (6, 11, 0, 4)


def _seqs(seed: int = 7) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 128, (n,), generator=g).tolist() for n in LENGTHS]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cfg(src, calib, out, **kw) -> PruneConfig:
    return PruneConfig(model=str(src), calib=str(calib), out=str(out), device="cpu", **kw)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model("qwen2", tmp_path_factory.mktemp("ct") / "m")


@pytest.mark.parametrize("method,sparsity", [("sparsegpt", "2:4"), ("wanda", "0.5")])
def test_response_only_statistics_equal_the_response_positions_alone(
        tmp_path, model_dir, method, sparsity):
    seqs = _seqs()
    calib = tmp_path / "c.jsonl"
    _write(calib, [{"input_ids": s, "prompt_tokens": p}
                   for s, p in zip(seqs, PROMPTS, strict=True)])
    out = tmp_path / "out"
    rep = prune_model(_cfg(model_dir, calib, out, method=method, sparsity=sparsity,
                           sequential="layer", calib_tokens="response"))
    total = sum(LENGTHS)
    assert rep["tokens"] == total and rep["statistics_tokens"] == total - sum(PROMPTS)
    ids = [torch.tensor([s]) for s in seqs]
    select = [torch.arange(p, len(s)) for s, p in zip(seqs, PROMPTS, strict=True)]
    ref = naive_prune(model_dir, ids, parse_pattern(sparsity), order="layer", method=method,
                      select=select)
    got = state(out)
    for k, v in got.items():
        torch.testing.assert_close(v, ref.state_dict()[k], atol=2e-5, rtol=1e-4, msg=k)
    # the default (every token) is another run: the prompt positions mattered
    full = naive_prune(model_dir, ids, parse_pattern(sparsity), order="layer", method=method)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q] != 0, full.state_dict()[q] != 0)


def test_response_only_combines_with_an_attention_mask(tmp_path, model_dir):
    seqs = _seqs(seed=9)
    masks = [[1] * len(s) for s in seqs]
    masks[1][15:20] = [0] * 5  # a hole in the response
    masks[0][:2] = [0] * 2  # left padding inside the prompt
    masks[0][-3:] = [0] * 3  # and right padding
    masks[2][3:8] = [0] * 5  # a hole in a line without a prompt
    rows = [{"input_ids": s, "attention_mask": m, "prompt_tokens": p}
            for s, m, p in zip(seqs, masks, PROMPTS, strict=True)]
    calib = tmp_path / "c.jsonl"
    _write(calib, rows)
    got = load_calibration(calib, vocab_size=128, max_tokens=64, calib_tokens="response")
    # line 1: padding removed (2 left, 3 right), its prompt's 4 unpadded positions excluded
    assert got[0].tokens == 15 and got[0].stat_positions.tolist() == list(range(4, 15))
    assert got[1].stat_positions.tolist() == [i for i in range(11, 33) if not 15 <= i < 20]
    assert got[2].stat_positions.tolist() == [i for i in range(48) if not 3 <= i < 8]
    assert got[3].stat_positions.tolist() == list(range(4, 9))
    out = tmp_path / "out"
    prune_model(_cfg(model_dir, calib, out, sparsity="2:4", sequential="layer",
                     calib_tokens="response"))
    ids = [g.input_ids for g in got]
    ref = naive_prune(model_dir, ids, parse_pattern("2:4"), order="layer",
                      select=[g.stat_positions for g in got])
    for k, v in state(out).items():
        torch.testing.assert_close(v, ref.state_dict()[k], atol=2e-5, rtol=1e-4, msg=k)


def test_all_is_the_default_and_ignores_prompt_tokens(tmp_path):
    calib = tmp_path / "c.jsonl"
    _write(calib, [{"input_ids": [1, 2, 3, 4], "prompt_tokens": 2}])
    (s,) = load_calibration(calib, vocab_size=8, max_tokens=8)
    assert s.stat_positions is None and s.provenance["prompt_tokens"] == 2
    (r,) = load_calibration(calib, vocab_size=8, max_tokens=8, calib_tokens="response")
    assert r.stat_positions.tolist() == [2, 3] and r.stat_tokens == 2
    _write(calib, [{"input_ids": [1, 2, 3, 4], "prompt_tokens": 0}])
    (z,) = load_calibration(calib, vocab_size=8, max_tokens=8, calib_tokens="response")
    assert z.stat_positions is None  # no prompt: the same run as "all"


@pytest.mark.parametrize("row,match", [
    ({"input_ids": [1, 2, 3]}, r'c\.jsonl:2: .*needs "prompt_tokens".*ssgr select'),
    ({"text": "abc", "prompt_tokens": 1}, r'c\.jsonl:2: .*needs "input_ids"'),
    ({"input_ids": [1, 2, 3], "prompt_tokens": 3}, r'c\.jsonl:2: "prompt_tokens" must be'),
    ({"input_ids": [1, 2, 3], "prompt_tokens": -1}, r'c\.jsonl:2: "prompt_tokens" must be'),
    ({"input_ids": [1, 2, 3], "prompt_tokens": "1"}, r'c\.jsonl:2: "prompt_tokens" must be'),
    ({"input_ids": [1, 2, 3], "prompt_tokens": 1, "attention_mask": [1, 0, 0]},
     r"c\.jsonl:2: no position is both in the response"),
])
def test_bad_lines_are_refused_with_file_and_line(tmp_path, row, match):
    calib = tmp_path / "c.jsonl"
    _write(calib, [{"input_ids": [1, 2], "prompt_tokens": 1}, row])
    with pytest.raises(CalibError, match=match):
        load_calibration(calib, vocab_size=8, max_tokens=8, tokenize=lambda t: [1, 2, 3],
                         calib_tokens="response")


def test_bad_option_is_refused(tmp_path):
    from ssgr.prune.config import validate

    with pytest.raises(PruneError, match="--calib-tokens"):
        validate(PruneConfig(model="m", calib="c", out="o", calib_tokens="prompt"))
