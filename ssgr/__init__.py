"""ssgr: fused kernels and a streaming engine for pruning reasoning LLMs (SparseGPT, Wanda)
calibrated on their own selected reasoning traces (SSGR, arXiv 2511.18864).

Importing ssgr does no work: subpackages load on use (``ssgr.ops``, ``ssgr.prune``, ...).
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
