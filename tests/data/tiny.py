"""Tiny random-init chat model + char-level tokenizer for the data tests (built locally)."""

from __future__ import annotations

import string
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]


def make_tokenizer():
    """A character-level fast tokenizer with a Qwen-like chat template that opens <think>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {t: i for i, t in enumerate(SPECIAL + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.add_tokens(THINK)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(tokenizer, seed: int = 0, eos_boost: float = 0.0):
    """A 2-layer Qwen2 with hidden size 32; ``eos_boost`` scales the EOS row of the LM head."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    if eos_boost:
        with torch.no_grad():
            model.lm_head.weight[tokenizer.eos_token_id] *= eos_boost
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(path: Path, seed: int = 0, eos_boost: float = 0.0) -> Path:
    """Save model + tokenizer to ``path`` (loadable by from_pretrained)."""
    tok = make_tokenizer()
    model = make_model(tok, seed, eos_boost)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
