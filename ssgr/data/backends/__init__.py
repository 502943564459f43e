"""Generation backends for ``ssgr generate --generator``: ``hf`` (transformers), ``vllm``,
``openai``.

Every backend turns a list of :class:`~ssgr.data.backends.base.Request` (one per sample, each with
its own seed) into :class:`~ssgr.data.backends.base.Completion` objects, yielded as they finish.
"""

from ssgr.data.backends.base import GENERATORS, Backend, Completion, Request, make_backend

__all__ = ["GENERATORS", "Backend", "Completion", "Request", "make_backend"]
