"""OpenAI-compatible generation backend (``vllm serve``, SGLang, ...) on the ``openai`` client.

Two APIs:

* ``completions`` (default when a tokenizer for the model can be loaded locally, from
  ``tokenizer=`` or the model name): the prompt is formatted here with the model's own chat
  template and sent to ``/v1/completions``, so the stored ``prompt`` is exactly what the model saw;
* ``chat``: messages are sent to ``/v1/chat/completions`` and the server applies the template;
  the stored prompt is then formatted locally when a tokenizer is available, else it is the plain
  user message (a warning says so). A separate ``reasoning_content``/``reasoning`` field (vLLM and
  SGLang reasoning parsers) is put back as ``<think>\\n...\\n</think>\\n\\n`` before the content.

Every sample is one request with ``n=1`` and the sample's ``seed``; up to ``concurrency`` requests
are in flight (one thread-safe ``openai.OpenAI`` client). Retries are the client's own: connection
errors, timeouts, HTTP 408, 409, 429 and 5xx are retried ``max_retries`` times with its
exponential backoff (0.5 s doubling up to 8 s, with jitter, or the server's ``Retry-After``);
then :class:`~ssgr.data.errors.GenerationError` is raised. Completions that finished before the
error are still yielded (and written), so nothing is lost and no half line is written.

Needs the optional package ``openai`` (``pip install 'ssgr[data]'``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ssgr.data.backends.base import Completion, Request, format_with_template
from ssgr.data.errors import DataError, GenerationError
from ssgr.errors import missing_extra

logger = logging.getLogger(__name__)


def normalize_base_url(url: str) -> str:
    """``http://host:port`` or ``.../v1`` -> ``.../v1`` (no trailing slash)."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise DataError(
            f"--server must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}"
        )
    return u if u.endswith("/v1") else u + "/v1"


class _BadResponse(Exception):
    """A response field of the wrong type or value (retried, then a GenerationError)."""

    def __init__(self, field: str, value: Any) -> None:
        super().__init__(field)
        self.field, self.value = field, value


class OpenAIBackend:
    """Generate through an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        server: str | None = None,
        api: str | None = None,
        tokenizer: Any = None,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_new_tokens: int = 32768,
        concurrency: int = 16,
        max_retries: int = 5,
        request_timeout: float = 600.0,
        wait_warning_s: float = 60.0,
        api_key: str | None = None,
        served_model_name: str | None = None,
        **_: Any,
    ) -> None:
        if not server:
            raise DataError("--generator openai needs --server URL (e.g. http://127.0.0.1:8000)")
        self.base = normalize_base_url(server)
        self.model = served_model_name or model
        if isinstance(tokenizer, str):
            name, tokenizer = tokenizer, self._try_tokenizer(tokenizer)
            if tokenizer is None:
                raise DataError(f"cannot load the tokenizer {name!r} locally (give a local path)")
        self.tokenizer = tokenizer if tokenizer is not None else self._try_tokenizer(model)
        if api is None:
            api = "completions" if self.tokenizer is not None else "chat"
        if api not in ("completions", "chat"):
            raise DataError(f"unknown OpenAI api {api!r}; choose completions or chat")
        if api == "completions" and self.tokenizer is None:
            raise DataError(
                "the completions API needs the model's tokenizer locally to apply its chat "
                "template; "
                "pass a tokenizer path or use api='chat'"
            )
        if api == "chat" and self.tokenizer is None:
            logger.warning(
                "no local tokenizer for %r: stored prompts are the plain user messages", model
            )
        self.api = api
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        if not request_timeout > 0:
            raise DataError(f"--request-timeout must be > 0 seconds, got {request_timeout}")
        self.request_timeout = request_timeout
        self.wait_warning_s = wait_warning_s
        try:
            import openai
        except ImportError:
            raise missing_extra("openai", "--generator openai", extra="data") from None
        self._openai = openai
        # local servers (vLLM, SGLang) accept any key; the client insists on one
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(
            base_url=self.base, api_key=key, max_retries=self.max_retries, timeout=request_timeout
        )

    @staticmethod
    def _try_tokenizer(name: str) -> Any:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except Exception as e:  # any failure just means "no local tokenizer"
            logger.info(
                "no local tokenizer for %r (%s); using the chat API", name, type(e).__name__
            )
            return None

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """Chat-formatted prompt (local template), or the plain user text without a tokenizer."""
        if self.tokenizer is not None:
            return format_with_template(self.tokenizer, messages)
        return "\n\n".join(m["content"] for m in messages)

    def _create(self, r: Request) -> Any:
        """One request through the client; its errors become :class:`GenerationError`."""
        oa = self._openai
        kw: dict[str, Any] = dict(
            model=self.model, max_tokens=self.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=r.seed, n=1,
        )
        url = self.base + ("/completions" if self.api == "completions" else "/chat/completions")
        try:
            if self.api == "completions":
                return self.client.completions.create(prompt=r.prompt, **kw)
            return self.client.chat.completions.create(messages=r.messages, **kw)
        except oa.APIStatusError as e:
            detail = (e.response.text if e.response is not None else str(e))[:500]
            raise GenerationError(
                f"server {url} rejected the request: HTTP {e.status_code}: {detail}"
            ) from None
        except (oa.APIConnectionError, oa.APITimeoutError) as e:
            cause = e.__cause__ or e
            raise GenerationError(
                f"could not get a response from the OpenAI-compatible server at {url} after "
                f"{self.max_retries + 1} attempts (last error: {cause}); check that the server "
                "(e.g. `vllm serve MODEL`) is running and that --server is right"
            ) from None
        except oa.APIResponseValidationError as e:
            raise GenerationError(f"server {url} returned an unexpected response: {e}") from None

    def _parse(self, out: Any) -> tuple[str, int | None, str]:
        """(text, completion tokens or None, finish reason) of one response; every field is
        checked. Raises ``_BadResponse`` naming the field."""
        choices = getattr(out, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _BadResponse("choices", choices)
        choice = choices[0]
        if self.api == "completions":
            text = getattr(choice, "text", None)
            if not isinstance(text, str):
                raise _BadResponse("choices[0].text", text)
        else:
            msg = getattr(choice, "message", None)
            content = getattr(msg, "content", None)
            if content is not None and not isinstance(content, str):
                raise _BadResponse("choices[0].message.content", content)
            text = content or ""
            extra = getattr(msg, "model_extra", None) or {}
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            if reasoning is not None and not isinstance(reasoning, str):
                raise _BadResponse("choices[0].message.reasoning_content", reasoning)
            if reasoning:
                text = f"<think>\n{reasoning}\n</think>\n\n{text}"
        raw_reason = getattr(choice, "finish_reason", None)
        if raw_reason is not None and not isinstance(raw_reason, str):
            raise _BadResponse("choices[0].finish_reason", raw_reason)
        usage = getattr(out, "usage", None)
        num = getattr(usage, "completion_tokens", None) if usage is not None else None
        if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 0):
            raise _BadResponse("usage.completion_tokens", num)
        if raw_reason not in ("stop", "length"):
            logger.debug("finish_reason %r treated as 'stop'", raw_reason)
        return text, num, "length" if raw_reason == "length" else "stop"

    def _one(self, r: Request) -> Completion:
        url = self.base + ("/completions" if self.api == "completions" else "/chat/completions")
        for attempt in range(self.max_retries + 1):
            out = self._create(r)
            try:
                text, num, reason = self._parse(out)
                break
            except _BadResponse as e:
                if attempt == self.max_retries:
                    raise GenerationError(
                        f"server {url} returned an invalid {e.field} ({e.value!r:.100}) in "
                        f"{self.max_retries + 1} attempt(s); nothing was written for problem "
                        f"{r.problem_id!r} sample {r.sample}: check the server"
                    ) from None
                logger.warning("server %s: invalid %s (%r); retrying", url, e.field, e.value)
        if num is None:
            if self.tokenizer is None:
                raise GenerationError(f"server {self.base} reported no usage.completion_tokens")
            num = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return Completion(r, text, int(num), reason)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Send the requests concurrently; yield completions as they arrive. While none
        arrives, a WARNING "still waiting for URL" is logged every ``wait_warning_s`` seconds;
        each attempt times out after ``request_timeout`` seconds (then retried, then a
        :class:`GenerationError`)."""
        if not requests:
            return
        error: BaseException | None = None
        with cf.ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._one, r) for r in requests]
            waiting = set(futures)
            while waiting:
                done, waiting = cf.wait(
                    waiting, timeout=self.wait_warning_s, return_when=cf.FIRST_COMPLETED
                )
                if not done:
                    logger.warning(
                        "still waiting for %s (%d request(s) outstanding, timeout %.0f s per "
                        "attempt, --request-timeout)", self.base, len(waiting),
                        self.request_timeout,
                    )
                    continue
                for fut in done:
                    if fut.cancelled():
                        continue
                    exc = fut.exception()
                    if exc is not None:
                        if error is None:
                            error = exc
                            for f in futures:
                                f.cancel()
                        continue
                    yield fut.result()
        if error is not None:
            raise error

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()
