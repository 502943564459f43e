"""Interface shared by the generation backends (``--generator hf|vllm|openai``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ssgr.data.errors import DataError

logger = logging.getLogger(__name__)

#: The generation backends (``--generator``; ``generator=`` in Python).
GENERATORS = ("hf", "vllm", "openai")


@dataclasses.dataclass(frozen=True)
class Request:
    """One sample to generate: ``prompt`` is the chat-formatted text, ``messages`` the chat."""

    problem_id: str
    sample: int
    prompt: str
    messages: list[dict[str, str]]
    seed: int


@dataclasses.dataclass(frozen=True)
class Completion:
    """A finished sample. ``num_tokens`` counts response tokens incl. a final EOS token."""

    request: Request
    response: str
    num_tokens: int
    finish_reason: str  # "stop" | "length"
    prompt: str | None = None  # set when the backend formatted the prompt itself


class Backend(Protocol):
    """What :func:`ssgr.data.generate.generate` needs from a backend."""

    name: str

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat-formatted prompt text for ``messages`` (generation prompt included)."""
        ...

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Generate every request; yield completions as they finish (any order)."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


def format_with_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Apply the tokenizer's own chat template (``add_generation_prompt=True``).

    Tokenizers without a chat template (base models) get a plain ``question\\n`` prompt and a
    warning: such a model has no ``<think>`` format.
    """
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(out, str):
            raise DataError("the tokenizer's chat template did not return text")
        return out
    if not getattr(format_with_template, "_warned", False):
        logger.warning("tokenizer has no chat template; using plain 'question\\n' prompts")
        format_with_template._warned = True  # type: ignore[attr-defined]
    return "\n\n".join(m["content"] for m in messages) + "\n"


def make_backend(name: str, model: str, **kwargs: Any) -> Backend:
    """Construct a generation backend by name (``hf``, ``vllm`` or ``openai``).

    Raises :class:`~ssgr.data.errors.DataError` for an unknown name.
    """
    if name == "hf":
        from ssgr.data.backends.hf import HFBackend

        return HFBackend(model, **kwargs)
    if name == "vllm":
        from ssgr.data.backends.vllm import VLLMBackend

        return VLLMBackend(model, **kwargs)
    if name == "openai":
        from ssgr.data.backends.openai import OpenAIBackend

        return OpenAIBackend(model, **kwargs)
    raise DataError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
