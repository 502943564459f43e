"""The pure-torch oracle of every ssgr op in one import: what every fast path is tested against.

Each op keeps its reference beside its other implementations (``ssgr/ops/<op>/reference.py``);
this module re-exports them. They run on any device and in float64 (pass float64 tensors), and
they follow llm-compressor 0.14 / IST-DASLab SparseGPT line by line where those implement the
same math.

Shapes: ``W[r, c]`` weights (r output rows, c input columns), ``H[c, c]`` Hessian (X^T X over
calibration tokens), ``X[t, c]`` activations (t tokens), ``scores[r, c]``.
"""

from __future__ import annotations

from .hessian.reference import HESSIAN_CHUNK, col_sq_norms_accumulate, hessian_accumulate
from .masks.reference import nm_mask, topk_mask, wanda_scores
from .sparsegpt.reference import inverse_hessian_factor, sparsegpt_blocks

__all__ = [
    "HESSIAN_CHUNK",
    "col_sq_norms_accumulate",
    "hessian_accumulate",
    "inverse_hessian_factor",
    "nm_mask",
    "sparsegpt_blocks",
    "topk_mask",
    "wanda_scores",
]
