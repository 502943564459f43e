"""OpenAI-compatible HTTP backend (``vllm serve``, SGLang, ...), standard library only.

Two APIs:

* ``completions`` (default when a tokenizer for the model can be loaded locally, from
  ``tokenizer=`` or the model name): the prompt is formatted here with the model's own chat
  template and sent to ``/v1/completions``, so the stored ``prompt`` is exactly what the model saw;
* ``chat``: messages are sent to ``/v1/chat/completions`` and the server applies the template;
  the stored prompt is then formatted locally when a tokenizer is available, else it is the plain
  user message (a warning says so). A separate ``reasoning_content``/``reasoning`` field (vLLM and
  SGLang reasoning parsers) is put back as ``<think>\\n...\\n</think>\\n\\n`` before the content.

Every sample is one request with ``n=1`` and the sample's ``seed``; up to ``concurrency`` requests
are in flight. Connection errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times with
exponential backoff (``backoff * 2**attempt`` seconds, capped at 60, with jitter); then
:class:`~ssgr.data.errors.BackendError` is raised. Completions that finished before the error are
still yielded (and written), so nothing is lost and no half line is written.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from ssgr.data.backends.base import Completion, Request, format_with_template
from ssgr.data.errors import BackendError, DataError

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def normalize_base_url(url: str) -> str:
    """``http://host:port`` or ``.../v1`` -> ``.../v1`` (no trailing slash)."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise DataError(f"--server must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    return u if u.endswith("/v1") else u + "/v1"


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
        backoff: float = 1.0,
        request_timeout: float = 3600.0,
        api_key: str | None = None,
        served_model_name: str | None = None,
        **_: Any,
    ) -> None:
        if not server:
            raise DataError("--backend openai needs --server URL (e.g. http://127.0.0.1:8000)")
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
                "the completions API needs the model's tokenizer locally to apply its chat template; "
                "pass a tokenizer path or use api='chat'"
            )
        if api == "chat" and self.tokenizer is None:
            logger.warning("no local tokenizer for %r: stored prompts are the plain user messages", model)
        self.api = api
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.api_key = api_key

    @staticmethod
    def _try_tokenizer(name: str) -> Any:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except Exception as e:  # any failure just means "no local tokenizer"
            logger.info("no local tokenizer for %r (%s); using the chat API", name, type(e).__name__)
            return None

    def format_prompt(self, messages: list[dict[str, str]]) -> str:
        """Chat-formatted prompt (local template), or the plain user text without a tokenizer."""
        if self.tokenizer is not None:
            return format_with_template(self.tokenizer, messages)
        return "\n\n".join(m["content"] for m in messages)

    # ------------------------------------------------------------------ HTTP

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base + path
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: str = ""
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.request_timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:500]
                if e.code not in _RETRY_STATUS:
                    raise BackendError(f"server {url} rejected the request: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError as e:
                raise BackendError(f"server {url} returned invalid JSON: {e}") from None
            if attempt < self.max_retries:
                delay = min(60.0, self.backoff * 2**attempt) * (1 + 0.1 * random.random())
                logger.warning(
                    "request to %s failed (%s); retry %d/%d in %.1fs",
                    url, last, attempt + 1, self.max_retries, delay,
                )
                time.sleep(delay)
        raise BackendError(
            f"could not get a response from the OpenAI-compatible server at {url} after "
            f"{self.max_retries + 1} attempts (last error: {last}); check that the server "
            "(e.g. `vllm serve MODEL`) is running and that --server is right"
        )

    def _one(self, r: Request) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": r.seed,
            "n": 1,
        }
        if self.api == "completions":
            body["prompt"] = r.prompt
            out = self._post("/completions", body)
        else:
            body["messages"] = r.messages
            out = self._post("/chat/completions", body)
        try:
            choice = out["choices"][0]
            if self.api == "completions":
                text = choice["text"]
            else:
                msg = choice["message"]
                text = msg.get("content") or ""
                reasoning = msg.get("reasoning_content") or msg.get("reasoning")
                if reasoning:
                    text = f"<think>\n{reasoning}\n</think>\n\n{text}"
            raw_reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"unexpected response from {self.base}: missing {e}: {str(out)[:300]}") from None
        usage = out.get("usage") or {}
        num = usage.get("completion_tokens")
        if num is None:
            if self.tokenizer is None:
                raise BackendError(f"server {self.base} reported no usage.completion_tokens")
            num = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if raw_reason not in ("stop", "length"):
            logger.debug("finish_reason %r treated as 'stop'", raw_reason)
        reason = "length" if raw_reason == "length" else "stop"
        return Completion(r, text, int(num), reason)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Send the requests concurrently; yield completions as they arrive."""
        if not requests:
            return
        error: BaseException | None = None
        with cf.ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._one, r) for r in requests]
            for fut in cf.as_completed(futures):
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
        """Nothing to release."""
