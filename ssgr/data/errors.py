"""Errors raised by :mod:`ssgr.data` for bad input and unreachable backends."""

from __future__ import annotations

from ssgr.errors import InputError, SSGRError


class DataError(InputError):
    """Bad input data or options (malformed file, missing field, impossible filter, ...).

    The message names the file and line where there is one, and what to do about it.
    """


class BackendError(SSGRError, RuntimeError):
    """A generation backend failed (server unreachable after retries, missing package, ...)."""


def missing_extra(package: str, pip_name: str, what: str) -> DataError:
    """Error for an optional package that is not installed."""
    return DataError(
        f"{what} needs the optional package {package!r}, which is not installed; "
        f"install it with: pip install {pip_name}"
    )
