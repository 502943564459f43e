"""Errors raised by the streaming pruning engine (all ``ValueError`` subclasses)."""

from __future__ import annotations

from ssgr.errors import InputError


class PruneError(InputError):
    """Bad input or a state the engine cannot continue from; the message names the fix."""


class CalibError(PruneError):
    """A calibration file problem; the message names the file and line."""


class ActivationError(PruneError):
    """NaN/Inf activations; the message names the layer and module."""
