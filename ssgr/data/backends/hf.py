"""transformers backend: batched sampling with per-sample seeds.

Sampling is done by :class:`SeededSampler`, a logits processor that draws every row's next token
from its own ``torch.Generator`` (seeded with the sample's seed) after temperature and top-p
(nucleus) filtering, and returns scores whose argmax is the drawn token; ``generate`` runs in
greedy mode around it, so transformers still handles the KV cache, left padding (with attention
masks), EOS and finished rows. A sample's tokens depend only on its seed and its logits, not on the
other rows of the batch (up to floating-point differences of padded vs unpadded batches), which is
what makes a resumed run reproduce the samples an uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ssgr.data.backends.base import Completion, Request, format_with_template
from ssgr.data.errors import DataError

logger = logging.getLogger(__name__)


def sample_next(scores: Any, generators: Sequence[Any], temperature: float, top_p: float) -> Any:
    """Draw one token per row. scores: [B, V] float logits; returns int64 [B].

    ``temperature == 0`` is greedy. Top-p keeps the smallest set of most likely tokens whose
    probability mass reaches ``top_p`` (always at least one token).
    """
    import torch

    if temperature <= 0:
        return scores.argmax(dim=-1)
    logits = scores.float() / temperature
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        remove = (cum - sorted_p) >= top_p  # tokens entirely beyond the nucleus
        sorted_p = sorted_p.masked_fill(remove, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    out = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    for i, g in enumerate(generators):
        out[i] = torch.multinomial(probs[i], 1, generator=g)[0]
    return out


class SeededSampler:
    """Logits processor doing per-row seeded sampling (see the module docstring)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: Any) -> None:
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        tok = sample_next(scores, self.generators, self.temperature, self.top_p)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tok[:, None], 0.0)
        return out


def default_device() -> str:
    """``cuda`` when available, else ``cpu`` (:func:`ssgr.models.default_device`)."""
    from ssgr.models import default_device as _default

    return _default()


class HFBackend:
    """Generate with a transformers causal LM (CPU or GPU)."""

    name = "hf"

    def __init__(
        self,
        model: str | Any,
        *,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_new_tokens: int = 32768,
        **_: Any,
    ) -> None:
        import torch

        from ssgr.models import load_model

        self.device = torch.device(device or default_device())
        if isinstance(model, str):
            self.model, own_tokenizer = load_model(model, str(self.device), dtype)
            self.tokenizer = tokenizer or own_tokenizer
        else:
            self.model = model
            if tokenizer is None:
                raise DataError("HFBackend: pass tokenizer= together with a model object")
            self.tokenizer = tokenizer
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.eos_ids = self._eos_ids()
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._warned_cap = False

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gc = getattr(self.model, "generation_config", None)
        for src in (getattr(gc, "eos_token_id", None), self.tokenizer.eos_token_id):
            if src is None:
                continue
            for i in src if isinstance(src, (list, tuple)) else [src]:
                if i not in ids:
                    ids.append(int(i))
        if not ids:
            raise DataError(
                "the model/tokenizer defines no eos token; cannot detect the end of a sample"
            )
        return ids

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """Chat-formatted prompt with the tokenizer's own template."""
        return format_with_template(self.tokenizer, messages)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Sample all requests as one left-padded batch."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if not requests:
            return
        enc = self.tokenizer(
            [r.prompt for r in requests],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        input_ids = enc["input_ids"].to(self.device)
        attention_mask = enc["attention_mask"].to(self.device)
        max_new = self.max_new_tokens
        if self.max_positions is not None and input_ids.shape[1] + max_new > self.max_positions:
            max_new = max(1, self.max_positions - input_ids.shape[1])
            if not self._warned_cap:
                logger.warning(
                    "max_new_tokens %d exceeds the model's %d positions; "
                    "capped to %d for this batch",
                    self.max_new_tokens,
                    self.max_positions,
                    max_new,
                )
                self._warned_cap = True
        sampler = SeededSampler(
            [r.seed for r in requests], self.temperature, self.top_p, self.device
        )
        # greedy around the seeded sampler; temperature / top_p set to their neutral values so
        # that the model's own sampling defaults (generation_config.json) are not merged in and
        # reported by transformers as "may be ignored": ssgr's sampler applies them instead
        gen_config = GenerationConfig(
            do_sample=False,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=max_new,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        new = out[:, input_ids.shape[1]:].tolist()
        eos = set(self.eos_ids)
        for r, toks in zip(requests, new, strict=True):
            stop = next((k for k, t in enumerate(toks) if t in eos), None)
            if stop is None:
                body, num, reason = toks, len(toks), "length"
            else:
                body, num, reason = toks[:stop], stop + 1, "stop"
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            yield Completion(r, text, num, reason)

    def close(self) -> None:
        """Drop the model."""
        self.model = None
