"""The training script: runs, saves a loadable model, is deterministic and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from ssgr.models import train_tiny

SMALL = ["--n-train", "120", "--steps", "4", "--batch-size", "4", "--warmup", "2", "--hidden", "32",
         "--intermediate", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2", "--no-eval",
         "--checkpoint-every", "2", "--log-every", "1", "--threads", "1"]


def _weights(d):
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


@pytest.mark.slow
def test_train_deterministic_and_resumable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, b = tmp_path / "a", tmp_path / "b"
    assert train_tiny.main(SMALL + ["--out", str(a / "model"), "--work-dir", str(a / "work")]) == 0
    # interrupted after 2 steps, then resumed from the checkpoint
    assert train_tiny.main(SMALL + ["--out", str(b / "model"), "--work-dir", str(b / "work"),
                                    "--stop-after", "2"]) == 0
    assert not (b / "model").exists()
    assert train_tiny.main(SMALL + ["--out", str(b / "model"), "--work-dir", str(b / "work")]) == 0
    wa, wb = _weights(a / "model"), _weights(b / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    model = AutoModelForCausalLM.from_pretrained(a / "model")
    tok = AutoTokenizer.from_pretrained(a / "model")
    assert model.config.hidden_size == 32 and tok.eos_token == "<|im_end|>"
    assert "python -m ssgr.models.train_tiny" in (a / "model" / "TRAINING.md").read_text()
    # a checkpoint written with other settings is refused
    with pytest.raises(ValueError, match="other settings"):
        train_tiny.main([*SMALL[:-2], "--threads", "1", "--lr", "0.1", "--out", str(b / "model"),
                         "--work-dir", str(b / "work")])


def test_training_data_excludes_eval_questions():
    from ssgr.data.problems import arith_problems

    probs = train_tiny._training_problems(3000, 1)
    banned = {p.question for p in arith_problems(train_tiny.EXCLUDE_N, seed=0)}
    assert probs and not any(p.question in banned for p in probs)
    assert {p.level for p in probs} == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="evaluation seed"):
        train_tiny._training_problems(10, 0)
    with pytest.raises(ValueError, match="--levels"):
        train_tiny._parse_levels("1,x")
