"""vLLM backend (optional extra ``vllm``): ``LLM.generate`` with ``SamplingParams``.

Each sample is its own request with ``SamplingParams(n=1, temperature, top_p, max_tokens,
seed=<the sample's seed>)`` rather than one request with ``n=16`` and one seed: per-sample seeds
make an interrupted run resume to exactly the samples an uninterrupted one would have drawn, and
vLLM's prefix caching shares the prompt's KV cache across the 16 requests of a problem anyway.

Several GPUs: ``tensor_parallel_size`` (``--tensor-parallel-size``: the model split over that
many GPUs) and ``data_parallel_size`` (``--data-parallel-size``: that many engine replicas) are
passed to ``vllm.LLM`` as the engine arguments of the same names (vLLM's ``EngineArgs``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ssgr.data.backends.base import Completion, Request, format_with_template
from ssgr.data.errors import DataError
from ssgr.errors import missing_extra

logger = logging.getLogger(__name__)


def parallel_kwargs(
    tensor_parallel_size: int | None = None, data_parallel_size: int | None = None
) -> dict[str, int]:
    """The ``vllm.LLM`` keyword arguments of ``--tensor-parallel-size`` and
    ``--data-parallel-size`` (None: vLLM's default, left out).

    Raises :class:`~ssgr.data.errors.DataError` for a value that is not an integer >= 1.
    """
    out: dict[str, int] = {}
    for flag, value in (("tensor-parallel-size", tensor_parallel_size),
                        ("data-parallel-size", data_parallel_size)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"--{flag} must be an integer >= 1 (GPUs for vLLM), got {value!r}")
        out[flag.replace("-", "_")] = value
    return out


class VLLMBackend:
    """Generate with an in-process ``vllm.LLM``.

    ``llm_kwargs`` are further ``vllm.LLM`` arguments. Raises
    :class:`~ssgr.data.errors.DataError` for a bad parallel size (before importing vLLM) and
    :class:`~ssgr.errors.MissingPackageError` when vLLM is not installed.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_new_tokens: int = 32768,
        seed: int = 0,
        dtype: str | None = None,
        llm_kwargs: dict[str, Any] | None = None,
        tensor_parallel_size: int | None = None,
        data_parallel_size: int | None = None,
        **_: Any,
    ) -> None:
        parallel = parallel_kwargs(tensor_parallel_size, data_parallel_size)
        try:
            import vllm
        except ImportError:
            raise missing_extra("vllm", "--generator vllm") from None
        self._vllm = vllm
        kwargs = {**dict(llm_kwargs or {}), **parallel}
        kwargs.setdefault("seed", seed)
        kwargs.setdefault("enable_prefix_caching", True)
        if dtype is not None:
            kwargs.setdefault("dtype", dtype)
        self.llm = vllm.LLM(model=model, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """Chat-formatted prompt with the model's own template."""
        return format_with_template(self.tokenizer, messages)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """One ``LLM.generate`` call for the whole batch of requests."""
        if not requests:
            return
        params = [
            self._vllm.SamplingParams(
                n=1,
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_new_tokens,
                seed=r.seed,
            )
            for r in requests
        ]
        outs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        for r, o in zip(requests, outs, strict=True):
            c = o.outputs[0]
            reason = "length" if c.finish_reason == "length" else "stop"
            yield Completion(r, c.text, len(c.token_ids), reason)

    def close(self) -> None:
        """Drop the engine."""
        self.llm = None
