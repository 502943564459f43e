"""Calibration data for SSGR: problems, generation backends, answer checking, selection.

Modules: :mod:`~ssgr.data.problems` (loading, built-in sources, arith generator, split),
:mod:`~ssgr.data.verify` (answer extraction, comparison, quality flags),
:mod:`~ssgr.data.generate` and :mod:`~ssgr.data.backends` (sampling into TRACES.jsonl),
:mod:`~ssgr.data.traces` (the append-only store), :mod:`~ssgr.data.select` (SSGR and ablation
strategies -> CALIB.jsonl), :mod:`~ssgr.data.corpus` (generic text), :mod:`~ssgr.data.cli`.
Nothing heavy is imported here.
"""

from ssgr.data.errors import BackendError, DataError, GenerationError

__all__ = ["BackendError", "DataError", "GenerationError"]
