"""The project's own error types, under one base class.

``ssgr``'s command line reports an :class:`SSGRError` as one ERROR line (the message names the
file, line, layer or module and the fix) and exits with status 2; any other exception is a bug or
an environment fault and keeps its traceback (shown with ``-v``). Library users can catch
:class:`SSGRError` to handle every error that ssgr raises on purpose.

Every subclass also derives from the builtin type that describes it (``ValueError`` for bad
input, ``RuntimeError`` for a failed computation or backend), so ``except ValueError`` in user
code keeps working.
"""

from __future__ import annotations

#: ``pip install 'ssgr[EXTRA]'`` installs the optional packages of one feature (pyproject.toml).
EXTRAS: dict[str, str] = {
    "math_verify": "data",
    "reasoning_gym": "data",
    "gensim": "data",
    "gguf": "data",
    "openai": "data",
    "matplotlib": "data",
    "triton": "triton",
    "vllm": "vllm",
    "llmcompressor": "test",
}


class SSGRError(Exception):
    """Base of every error ssgr raises on purpose (bad input, unavailable backend, ...)."""


class MissingPackageError(SSGRError, ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


def missing_extra(package: str, what: str, extra: str | None = None) -> MissingPackageError:
    """The error for an optional ``package`` (import name) that ``what`` needs.

    The message names the extra of ssgr that installs it (``pip install 'ssgr[data]'``), from
    :data:`EXTRAS` unless ``extra`` is given.
    """
    extra = extra or EXTRAS.get(package, "all")
    return MissingPackageError(
        f"{what} needs the optional package {package!r}, which is not installed; install it with "
        f"pip install 'ssgr[{extra}]' (or pip install {package.replace('_', '-')})"
    )


class InputError(SSGRError, ValueError):
    """Bad input: a malformed file or line, a missing field, an impossible option.

    The message names the file and line (or the option) and what to do about it.
    """
