"""OpenAI-compatible generation backend (``vllm serve``, SGLang, ...) on the ``openai`` client.

Two APIs:

* ``completions`` (default when a tokenizer for the model can be loaded locally, from
  ``tokenizer=`` or the model name): the prompt is formatted here with the model's own chat
  template and sent to ``/v1/completions``, so the stored ``prompt`` is exactly what the model saw;
* ``chat``: messages are sent to ``/v1/chat/completions`` and the server applies the template;
  the stored prompt is then formatted locally when a tokenizer is available, else it is the plain
  user message (a warning says so). A separate ``reasoning_content``/``reasoning`` field (vLLM and
  SGLang reasoning parsers) is put back as ``<think>\\n...\\n</think>\\n\\n`` before the content.

Every sample is one request with ``n=1`` and the sample's ``seed``. Several servers (replicas of
one model: a fleet of ``vllm serve`` / SGLang processes) can be given, as a list or one
comma-separated string; each request goes to the live server with the fewest outstanding
requests (least-outstanding-requests balancing, ties to the first listed), with at most
``concurrency`` requests in flight in all and at most ``concurrency_per_server`` on one server
(one thread-safe ``openai.OpenAI`` client per server, a ``concurrent.futures`` thread pool).
Retries are the client's own: connection errors, timeouts, HTTP 408, 409, 429 and 5xx are
retried ``max_retries`` times with its exponential backoff (0.5 s doubling up to 8 s, with
jitter, or the server's ``Retry-After``). A server whose request still fails with a connection
error, a timeout or a 5xx is marked down for the rest of the run (a WARNING names it) and that
request, like every other one it had in flight, is sent again to another live server: a sample
is yielded once, from the one request that succeeded, so none is lost or duplicated. When every
server is down, :class:`~ssgr.data.errors.GenerationError` names each with its last error; any
other failure (a 4xx rejection, an invalid response) is a ``GenerationError`` at once.
Completions that finished before an error are still yielded (and written), so a rerun resumes
without losing them and no half line is written.

Needs the optional package ``openai`` (``pip install 'ssgr[data]'``).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
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


def parse_servers(server: str | Sequence[str] | None) -> list[str]:
    """The server base URLs of ``--server``: one URL, a comma-separated string or a list of
    either, each normalized by :func:`normalize_base_url`, in the order given.

    Raises :class:`~ssgr.data.errors.DataError` for no URL, a non-http(s) URL or a URL given
    twice.
    """
    items = [server] if isinstance(server, str) else list(server or [])
    urls = [normalize_base_url(u) for item in items for u in str(item).split(",") if u.strip()]
    if not urls:
        raise DataError("--generator openai needs --server URL (e.g. http://127.0.0.1:8000)")
    dup = sorted({u for u in urls if urls.count(u) > 1})
    if dup:
        raise DataError(f"--server lists {', '.join(dup)} more than once; give each server once")
    return urls


@dataclasses.dataclass(eq=False)
class Server:
    """One OpenAI-compatible server and its bookkeeping (used by the dispatcher thread only)."""

    url: str  #: base URL ending in ``/v1``
    client: Any  #: its ``openai.OpenAI`` client
    outstanding: int = 0  #: requests in flight now
    completed: int = 0  #: completions received
    error: ServerDownError | None = None  #: why it is down (None: live)

    @property
    def down(self) -> bool:
        """Marked down (see :class:`ServerDownError`)."""
        return self.error is not None


def least_outstanding(servers: Sequence[Server], cap: int | None = None) -> Server | None:
    """The live server with the fewest outstanding requests (the first listed among equals),
    skipping servers at ``cap`` requests; None when no server can take one more."""
    live = [s for s in servers if not s.down and (cap is None or s.outstanding < cap)]
    return min(live, key=lambda s: s.outstanding) if live else None


class ServerDownError(GenerationError):
    """A request failed with a connection error, a timeout or an HTTP 5xx after the client's
    retries: its server is taken out of the rotation and the request is sent elsewhere."""

    def __init__(self, message: str, url: str, reason: str) -> None:
        super().__init__(message)
        self.url, self.reason = url, reason


class _BadResponse(Exception):
    """A response field of the wrong type or value (retried, then a GenerationError)."""

    def __init__(self, field: str, value: Any) -> None:
        super().__init__(field)
        self.field, self.value = field, value


class OpenAIBackend:
    """Generate through one or several OpenAI-compatible servers (see the module docstring).

    ``server`` is one URL, a comma-separated string or a list; ``concurrency`` caps the requests
    in flight in all (``ssgr generate`` passes ``--batch-size``), ``concurrency_per_server``
    those on one server (None: no cap beyond ``concurrency``). Raises
    :class:`~ssgr.data.errors.DataError` for bad options and
    :class:`~ssgr.errors.MissingPackageError` without the ``openai`` package.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        server: str | Sequence[str] | None = None,
        api: str | None = None,
        tokenizer: Any = None,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_new_tokens: int = 32768,
        concurrency: int = 16,
        concurrency_per_server: int | None = None,
        max_retries: int = 5,
        request_timeout: float = 600.0,
        wait_warning_s: float = 60.0,
        api_key: str | None = None,
        served_model_name: str | None = None,
        **_: Any,
    ) -> None:
        urls = parse_servers(server)
        self.base = urls[0]
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
        if concurrency_per_server is not None and concurrency_per_server < 1:
            raise DataError(
                f"--concurrency-per-server must be >= 1, got {concurrency_per_server}"
            )
        self.concurrency_per_server = concurrency_per_server
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
        self.servers = [
            Server(u, openai.OpenAI(base_url=u, api_key=key, max_retries=self.max_retries,
                                    timeout=request_timeout))
            for u in urls
        ]
        self.client = self.servers[0].client

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

    def _endpoint(self, server: Server) -> str:
        return server.url + ("/completions" if self.api == "completions" else "/chat/completions")

    def _create(self, server: Server, r: Request) -> Any:
        """One request through ``server``'s client; its errors become :class:`GenerationError`
        (:class:`ServerDownError` for a connection error, a timeout or an HTTP 5xx)."""
        oa = self._openai
        kw: dict[str, Any] = dict(
            model=self.model, max_tokens=self.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=r.seed, n=1,
        )
        url = self._endpoint(server)
        try:
            if self.api == "completions":
                return server.client.completions.create(prompt=r.prompt, **kw)
            return server.client.chat.completions.create(messages=r.messages, **kw)
        except oa.APIStatusError as e:
            detail = (e.response.text if e.response is not None else str(e))[:500]
            msg = f"server {url} rejected the request: HTTP {e.status_code}: {detail}"
            if e.status_code >= 500:
                raise ServerDownError(msg, server.url, f"HTTP {e.status_code}") from None
            raise GenerationError(msg) from None
        except (oa.APIConnectionError, oa.APITimeoutError) as e:
            cause = e.__cause__ or e
            reason = (
                f"timed out after {self.request_timeout:g} s"
                if isinstance(e, oa.APITimeoutError) else f"{type(cause).__name__}: {cause}"
            )
            raise ServerDownError(
                f"could not get a response from the OpenAI-compatible server at {url} after "
                f"{self.max_retries + 1} attempts (last error: {cause}); check that the server "
                "(e.g. `vllm serve MODEL`) is running and that --server is right",
                server.url, reason,
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

    def _one(self, server: Server, r: Request) -> Completion:
        url = self._endpoint(server)
        for attempt in range(self.max_retries + 1):
            out = self._create(server, r)
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
                raise GenerationError(f"server {server.url} reported no usage.completion_tokens")
            num = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return Completion(r, text, int(num), reason)

    def _mark_down(self, server: Server, err: ServerDownError) -> None:
        if server.down:
            return
        server.error = err
        live = [s for s in self.servers if not s.down]
        if live:
            logger.warning(
                "OpenAI-compatible server %s is down (%s); taken out of the rotation for this "
                "run, its requests go to the %d live server(s): %s", server.url, err.reason,
                len(live), ", ".join(s.url for s in live),
            )
        else:
            logger.warning("OpenAI-compatible server %s is down (%s)", server.url, err.reason)

    def _all_down(self, left: int) -> GenerationError:
        """The error once no server is live; one server: its own last error, unchanged."""
        if len(self.servers) == 1 and self.servers[0].error is not None:
            return self.servers[0].error
        each = "; ".join(f"{s.url} ({s.error.reason if s.error else 'up'})" for s in self.servers)
        return GenerationError(
            f"all {len(self.servers)} OpenAI-compatible servers are down: {each}. {left} "
            "sample(s) were not generated; the finished ones are kept in the traces file: "
            "restart the servers (or pass live --server URLs) and rerun the same command to "
            "resume"
        )

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """Send the requests concurrently over the live servers (fewest outstanding first);
        yield completions as they arrive, each request exactly once. While none arrives, a
        WARNING "still waiting for URL" is logged every ``wait_warning_s`` seconds; each attempt
        times out after ``request_timeout`` seconds (then retried by the client, then its server
        is marked down and the request goes to another one). Raises :class:`GenerationError`
        when every server is down or a request fails otherwise."""
        if not requests:
            return
        queue = collections.deque(requests)
        cap = self.concurrency_per_server
        workers = min(self.concurrency, len(requests),
                      cap * len(self.servers) if cap is not None else len(requests))
        running: dict[cf.Future[Completion], tuple[Server, Request]] = {}
        error: BaseException | None = None
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            while True:
                while error is None and queue and len(running) < workers:
                    server = least_outstanding(self.servers, cap)
                    if server is None:
                        break
                    r = queue.popleft()
                    server.outstanding += 1
                    running[pool.submit(self._one, server, r)] = (server, r)
                if error is None and queue and not running:
                    error = self._all_down(len(queue))
                if not running:
                    break
                done, _ = cf.wait(
                    running, timeout=self.wait_warning_s, return_when=cf.FIRST_COMPLETED
                )
                if not done:
                    busy = [s for s in self.servers if s.outstanding]
                    logger.warning(
                        "still waiting for %s (%d request(s) outstanding, timeout %.0f s per "
                        "attempt, --request-timeout)",
                        ", ".join(s.url if len(self.servers) == 1 else f"{s.url} [{s.outstanding}]"
                                  for s in busy),
                        len(running), self.request_timeout,
                    )
                    continue
                for fut in done:
                    server, r = running.pop(fut)
                    server.outstanding -= 1
                    exc = fut.exception()
                    if exc is None:
                        server.completed += 1
                        yield fut.result()
                    elif isinstance(exc, ServerDownError):
                        self._mark_down(server, exc)
                        queue.appendleft(r)  # sent again to a live server
                    elif error is None:
                        error = exc
        if error is not None:
            raise error

    def close(self) -> None:
        """Close every client's connection pool (logs the completions per server when there
        are several)."""
        if len(self.servers) > 1:
            logger.info(
                "completions per server: %s",
                ", ".join(f"{s.url} {s.completed}{' (down)' if s.down else ''}"
                          for s in self.servers),
            )
        for s in self.servers:
            s.client.close()
