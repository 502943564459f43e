"""Train the embedded tiny reasoning model (``python -m ssgr.models.train_tiny``).

Data: ``builtin:arith`` problems of the generator seed ``--train-seed`` (default 1), all five
levels, with every problem whose question text also occurs among the first
:data:`EXCLUDE_N` problems of generator seed 0 removed. Seed 0 is what ``builtin:arith`` gives by
default, so every default evaluation set (``builtin:arith`` with ``n <= 2000``, either side of
any split) is unseen in training, even for level-1 questions, whose space is small enough that
another seed repeats many of them.

Each example is ``format_prompt(tokenizer, problem)`` (the exact prompt ``ssgr generate`` uses)
followed by the problem's ``solution`` and ``<|im_end|>``; the loss is taken on the response
tokens only. Batches hold problems of one level (little padding), in an order that depends only
on ``--seed`` and the step, so a run stopped and restarted from its checkpoint continues exactly.
Optimiser: AdamW, linear warm-up then cosine decay to 10% of the peak learning rate.

At the end the model is saved (safetensors, tokenizer, generation config) to ``--out``, evaluated
at temperature 0.6 on the held-out split of ``builtin:arith`` and ``TRAINING.md`` is written
beside the weights with the command, seed, training time and the accuracy table by level.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ssgr.errors import InputError
from ssgr.io import write_json_atomic

logger = logging.getLogger(__name__)

EXCLUDE_N = 2000
EVAL_SOURCE = "builtin:arith"  # n=1000, seed 0; held-out 20% split (seed 0) -> 200 problems


def _training_problems(
    n: int, train_seed: int, levels: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> list[Any]:
    """``n`` arith problems of seed ``train_seed`` minus questions seen in seed 0's first EXCLUDE_N.

    ``levels`` is the generator's level cycle: a level listed twice gets twice the problems.
    """
    from ssgr.data.problems import arith_problems

    if train_seed == 0:
        raise InputError("--train-seed 0 is the evaluation seed of builtin:arith; use another")
    banned = {p.question for p in arith_problems(EXCLUDE_N, seed=0)}
    probs = [
        p for p in arith_problems(n, seed=train_seed, levels=levels) if p.question not in banned
    ]
    logger.info(
        "training problems: %d of %d (excluded %d seen in seed 0)", len(probs), n, n - len(probs)
    )
    return probs


def _parse_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--levels must be comma-separated integers, got {text!r}") from None
    if not levels or any(not 1 <= v <= 9 for v in levels):
        raise InputError(f"--levels must list levels in 1..9, got {text!r}")
    return levels


def _encode(tokenizer: Any, problems: list[Any]) -> list[tuple[list[int], list[int], int]]:
    """(prompt ids, response ids incl. EOS, level) per problem."""
    from ssgr.data.generate import format_prompt

    out = []
    for p in problems:
        prompt = tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        resp = tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        out.append((prompt, resp, int(p.level)))
    return out


def _batches(examples: list[tuple[list[int], list[int], int]], batch_size: int, seed: int,
             epoch: int) -> list[list[int]]:
    """One epoch of level-homogeneous batches (index lists), shuffled by ``(seed, epoch)``."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    by_level: dict[int, list[int]] = {}
    for i, (_, _, lvl) in enumerate(examples):
        by_level.setdefault(lvl, []).append(i)
    batches: list[list[int]] = []
    for lvl in sorted(by_level):
        idx = by_level[lvl]
        perm = torch.randperm(len(idx), generator=g).tolist()
        shuffled = [idx[j] for j in perm]
        batches += [
            shuffled[k : k + batch_size]
            for k in range(0, len(shuffled) - batch_size + 1, batch_size)
        ]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[j] for j in order]


def _collate(
    examples: list[tuple[list[int], list[int], int]], idx: list[int], pad_id: int
) -> dict[str, Any]:
    """Right-padded batch: input_ids / attention_mask / labels, each int64 [B, T]."""
    import torch

    seqs = [examples[i][0] + examples[i][1] for i in idx]
    t = max(len(s) for s in seqs)
    ids = torch.full((len(idx), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), t), dtype=torch.long)
    labels = torch.full((len(idx), t), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        p, resp, _ = examples[i]
        n = len(p) + len(resp)
        ids[r, :n] = torch.tensor(p + resp)
        mask[r, :n] = 1
        labels[r, len(p) : n] = torch.tensor(resp)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr(step: int, steps: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) and save the model; returns the training statistics."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, Qwen2ForCausalLM

    from ssgr.data.generate import format_prompt
    from ssgr.models.tiny import build_tokenizer, tiny_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    problems = _training_problems(args.n_train, args.train_seed, _parse_levels(args.levels))
    fmt_tok = build_tokenizer(["x"])  # the template does not depend on the vocabulary
    corpus = [format_prompt(fmt_tok, p) for p in problems[:5000]] + [
        p.solution for p in problems[:5000]
    ]
    tokenizer = build_tokenizer(corpus, vocab_size=args.vocab_size)
    examples = _encode(tokenizer, problems)
    logger.info("vocabulary %d tokens; longest example %d tokens", len(tokenizer),
                max(len(a) + len(b) for a, b, _ in examples))

    arch = {"hidden_size": args.hidden, "intermediate_size": args.intermediate,
            "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
            "num_key_value_heads": args.kv_heads}
    config = tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, **arch)
    model = Qwen2ForCausalLM(config)
    nparams = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, %.2fM parameters", arch, nparams / 1e6)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )

    run_key = {
        k: v
        for k, v in vars(args).items()
        if k
        not in (
            "out",
            "work_dir",
            "no_eval",
            "eval_k",
            "threads",
            "stop_after",
            "restart",
            "eval_only",
            "log_every",
        )
    }
    ckpt_path = work / "checkpoint.pt"
    step, elapsed = 0, 0.0
    if ckpt_path.exists() and not args.restart:
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["run_key"] != run_key:
            raise InputError(f"{ckpt_path} was written with other settings {ck['run_key']}; "
                             "pass --restart or another --work-dir")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        step, elapsed = ck["step"], ck["elapsed"]
        logger.info("resuming from %s at step %d", ckpt_path, step)

    per_epoch = len(_batches(examples, args.batch_size, args.seed, 0))
    model.train()
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=args.steps, initial=step, desc="train tiny", unit="step")
    ema = None
    epoch_cache: dict[int, list[list[int]]] = {}
    stop_at = args.steps if args.stop_after is None else min(args.steps, step + args.stop_after)
    while step < stop_at:
        epoch, k = divmod(step, per_epoch)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: _batches(examples, args.batch_size, args.seed, epoch)}
        batch = _collate(examples, epoch_cache[epoch][k], tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.warmup, args.lr)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(
            {"loss": f"{ema:.4f}", "lr": f"{_lr(step - 1, args.steps, args.warmup, args.lr):.2e}"}
        )
        if step % args.log_every == 0:
            logger.info(
                "step %d/%d loss %.4f (%.0fs)", step, args.steps, ema, time.perf_counter() - t0
            )
        if step % args.checkpoint_every == 0 or step == stop_at:
            _save_atomic({"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                          "elapsed": time.perf_counter() - t0, "run_key": run_key}, ckpt_path)
    bar.close()
    seconds = time.perf_counter() - t0
    if step < args.steps:
        logger.info(
            "stopped at step %d of %d (--stop-after); run again to resume", step, args.steps
        )
        return {"stopped_at": step}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=0.6, top_p=0.95, max_new_tokens=256,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stats = {"train_seconds": round(seconds, 1), "steps": args.steps, "batch_size": args.batch_size,
             "examples": len(examples), "epochs": round(args.steps / per_epoch, 2),
             "parameters": nparams, "final_loss_ema": ema, "arch": arch, "threads": args.threads,
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}
    write_json_atomic(work / "train_stats.json", stats)
    logger.info("trained in %.0fs; saved to %s", seconds, out)
    return stats


def write_training_md(out: Path, command: str, args: argparse.Namespace, stats: dict[str, Any],
                      result: dict[str, Any] | None) -> None:
    """Write ``TRAINING.md`` (command, seed, data, time, accuracy table) beside the weights."""
    lines = [
        "# Tiny reasoning model: how it was trained",
        "",
        "```",
        command,
        "```",
        "",
        f"- seed {args.seed}; training problems: `builtin:arith` generator seed {args.train_seed}, "
        f"n={args.n_train}, level cycle {args.levels}, minus every question that occurs in the "
        f"first {EXCLUDE_N} problems of seed 0 ({stats['examples']} examples left)",
        f"- architecture: Qwen2, {stats['arch']}, {stats['parameters'] / 1e6:.2f}M parameters, "
        "tied embeddings, float32",
        f"- optimiser: AdamW lr {args.lr} (warm-up {args.warmup}, cosine to 10%), weight decay "
        f"{args.weight_decay}, batch {args.batch_size}, {args.steps} steps "
        f"({stats['epochs']} epochs), "
        "loss on response tokens only",
        f"- training wall time: {stats['train_seconds']:.0f} s on {stats['machine']} "
        f"(torch threads {stats['threads']}, machine shared with other jobs); final loss (EMA) "
        f"{stats['final_loss_ema']:.4f}",
    ]
    if result is not None:
        from ssgr.eval.accuracy import format_table

        lines += [
            "",
            f"## Accuracy (`ssgr eval tiny --problems {EVAL_SOURCE} --k {result['k']}`: "
            f"held-out 20% split, seed {result['settings']['seed']}, "
            f"T {result['settings']['temperature']}, "
            f"top-p {result['settings']['top_p']})",
            "",
            "```",
            format_table(result),
            "```",
        ]
    (out / "TRAINING.md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the training script."""
    from ssgr.models.tiny import DEFAULT_ARCH, TINY_DIR

    p = argparse.ArgumentParser(prog="python -m ssgr.models.train_tiny", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", default=str(TINY_DIR), help="model directory to write (default: the packaged one)"
    )
    p.add_argument("--work-dir", default=str(Path.home() / ".cache" / "ssgr" / "tiny-train"),
                   help="checkpoint + stats directory (resumed from when present)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (checkpointed) after this many steps in this invocation; rerun to resume",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-seed", type=int, default=1, help="arith generator seed of the training data"
    )
    p.add_argument("--n-train", type=int, default=40000)
    p.add_argument(
        "--levels",
        default="1,1,1,1,2,2,3,4,5",
        help="level cycle of the training problems (repeats weight a level; default 4:2:1:1:1)",
    )
    p.add_argument("--vocab-size", type=int, default=384)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--hidden", type=int, default=DEFAULT_ARCH["hidden_size"])
    p.add_argument("--intermediate", type=int, default=DEFAULT_ARCH["intermediate_size"])
    p.add_argument("--layers", type=int, default=DEFAULT_ARCH["num_hidden_layers"])
    p.add_argument("--heads", type=int, default=DEFAULT_ARCH["num_attention_heads"])
    p.add_argument("--kv-heads", type=int, default=DEFAULT_ARCH["num_key_value_heads"])
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (on a busy shared machine 1 can be faster)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--eval-k", type=int, default=4)
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--eval-only", action="store_true",
                   help="do not train: evaluate --out and rewrite TRAINING.md from the saved stats")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: train, save, evaluate, write TRAINING.md."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = "python -m ssgr.models.train_tiny " + " ".join(
        shlex.quote(a) for a in argv if a != "--eval-only"
    )
    if args.eval_only:
        stats = json.loads((Path(args.work_dir) / "train_stats.json").read_text())
    else:
        stats = train(args)
        if "stopped_at" in stats:
            return 0
    result = None
    if not args.no_eval:
        import torch

        from ssgr.eval.accuracy import evaluate, format_table

        torch.set_num_threads(args.threads)
        out = Path(args.out)
        result = evaluate(
            str(out),
            EVAL_SOURCE,
            k=args.eval_k,
            out=Path(args.work_dir) / "EVAL.json",
            traces=Path(args.work_dir) / f"EVAL.k{args.eval_k}.traces.jsonl",
            batch_size=100,
        )
        sys.stdout.write(format_table(result) + "\n")
    write_training_md(Path(args.out), command, args, stats, result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
