"""Imports every op module so their backends register themselves.

The reference and cpu implementations live beside each op's public function; GPU backends
(``triton`` from ssgr.kernels, ``cuda`` from ssgr._cuda) register from their own glue modules,
whose probes say why they cannot run where that is so.
"""

from . import hessian, masks, obs  # noqa: F401
from . import _cuda, _triton  # noqa: F401,E402  (GPU backends; their probes import lazily)
