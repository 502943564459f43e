"""Errors raised by the streaming pruning engine.

All derive from :class:`ssgr.errors.InputError` (an :class:`~ssgr.errors.SSGRError` and a
``ValueError``): ``python -m ssgr.prune`` reports them as one ERROR line and exits with status 2.
"""

from __future__ import annotations

from ssgr.errors import InputError


class PruneError(InputError):
    """Bad input or a state the engine cannot continue from; the message names the fix."""


class CalibError(PruneError):
    """A calibration file problem; the message names the file and line."""


class ActivationError(PruneError):
    """NaN/Inf activations; the message names the layer and module."""


class MissingFileError(PruneError, FileNotFoundError):
    """A model directory, shard or calibration file that does not exist (also a
    ``FileNotFoundError``, as it was before it became a :class:`PruneError`)."""
