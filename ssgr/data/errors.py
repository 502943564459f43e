"""Errors raised by :mod:`ssgr.data` for bad input and failed generation backends."""

from __future__ import annotations

from ssgr.errors import InputError, SSGRError


class DataError(InputError):
    """Bad input data or options (malformed file, missing field, impossible filter, ...).

    The message names the file and line where there is one, and what to do about it.
    """


class GenerationError(SSGRError, RuntimeError):
    """A generation backend (``--generator hf|vllm|openai``) failed: server unreachable after
    retries, request rejected, malformed response."""


#: Deprecated alias of :class:`GenerationError` (its name until 0.1; removed in the next release).
BackendError = GenerationError
