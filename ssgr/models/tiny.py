"""The embedded tiny reasoning model (``--model tiny``): tokenizer and architecture.

The model is a small Qwen2 (``Qwen2ForCausalLM``) trained by :mod:`ssgr.models.train_tiny` on
``builtin:arith`` problems to answer in the reasoning format
``<think> 7 + 5 = 12; 12 * 3 = 36 </think> \\boxed{36}`` after a Qwen-style chat template. Its
directory (``ssgr/models/tiny/``) is a plain Hugging Face model directory, so
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load it offline.

Tokenizer: a byte-level BPE built locally with the ``tokenizers`` library in exactly the form
``transformers`` rebuilds for a ``qwen2`` model (``AutoTokenizer`` always loads ``Qwen2Tokenizer``
for that model type, with Qwen's NFC normaliser, pre-tokenisation regex and byte-level
pre-tokenizer/decoder), so the tokenizer used in training is the one every later load gets.
Qwen's regex spells every digit as its own token (numbers are never merged and look the same in
the question, the steps and the boxed answer); BPE merges are learned only inside words, from the
training prompts, so the fixed instruction costs few tokens while any text still tokenizes
(byte fallback through the 256 byte symbols). ``<|im_start|>``, ``<|im_end|>`` (end of turn = EOS)
and ``<|endoftext|>`` (padding) are special tokens; ``<think>`` and ``</think>`` are ordinary added
tokens, so they survive ``decode(..., skip_special_tokens=True)`` as the answer checker needs.

Every Linear layer has ``in_features`` divisible by 8, so 2:4 and 4:8 pruning apply everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ssgr.errors import InputError

TINY_DIR = Path(__file__).resolve().parent / "tiny"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
THINK_TOKENS = ("<think>", "</think>")
SPECIAL_TOKENS = (PAD, IM_START, IM_END)

#: Qwen-style template; the generation prompt is the bare assistant header, so the model itself
#: writes ``<think>`` as its first token.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: transformers' Qwen2 pre-tokenisation regex (what ``Qwen2Tokenizer`` rebuilds on load)
PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)

#: default architecture (see :func:`tiny_config`)
DEFAULT_ARCH: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def build_tokenizer(texts: Iterable[str], vocab_size: int = 384) -> Any:
    """Train the byte-level BPE on ``texts``; returns it as ``AutoTokenizer`` loads it (saved +
    reloaded).

    ``vocab_size`` bounds the vocabulary (specials + 256 byte symbols + learned merges).
    Deterministic for the same ``texts``.
    """
    import json
    import tempfile

    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=DEFAULT_ARCH["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    with tempfile.TemporaryDirectory(prefix="ssgr-tiny-tok-") as d:
        fast.save_pretrained(d)
        (Path(d) / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        loaded = AutoTokenizer.from_pretrained(d)
    probe = "<think> 12 + 3 = 15; 15 * 2 = 30 </think> \\boxed{30}"
    if (
        loaded(probe)["input_ids"] != fast(probe)["input_ids"]
        or loaded.decode(fast(probe)["input_ids"]) != probe
    ):
        raise RuntimeError(
            "the tiny tokenizer does not survive a save/load round trip through AutoTokenizer"
        )
    return loaded


def tiny_config(vocab_size: int, eos_token_id: int, pad_token_id: int, **arch: int) -> Any:
    """A ``Qwen2Config`` for the tiny model; ``arch`` overrides :data:`DEFAULT_ARCH` entries."""
    from transformers import Qwen2Config

    unknown = set(arch) - set(DEFAULT_ARCH)
    if unknown:
        raise InputError(
            f"unknown architecture option(s) {sorted(unknown)}; known: {sorted(DEFAULT_ARCH)}"
        )
    a = {**DEFAULT_ARCH, **arch}
    for key in ("hidden_size", "intermediate_size"):
        if a[key] % 8:
            raise InputError(
                f"{key}={a[key]} must be a multiple of 8 (2:4 / 4:8 pruning of every Linear)"
            )
    if a["hidden_size"] % a["num_attention_heads"]:
        raise InputError("hidden_size must be divisible by num_attention_heads")
    if (a["hidden_size"] // a["num_attention_heads"]) % 8:
        raise InputError("head dim must be a multiple of 8 (o_proj in_features)")
    return Qwen2Config(
        vocab_size=vocab_size,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        **a,
    )
