"""llm-compressor's SparseGPT as a peer, for tests and benchmarks that compare ssgr against it.

One helper, so every comparison calls the peer the same way: :func:`llmcompressor_sparsify` runs
llm-compressor 0.14's ``sparsify_weight`` (the per-module step of its ``SparseGPTModifier``, same
semantics as IST-DASLab's ``fasterprune``) on a bias-free Linear holding ``W``. Imports
llmcompressor only when called.
"""

from __future__ import annotations

import torch

from ssgr.errors import missing_extra


def peer_pattern(sparsity: float | None = None, n: int = 0, m: int = 0) -> tuple[float, int, int]:
    """llm-compressor's ``(sparsity, prune_n, prune_m)`` for ssgr's ``sparsity=`` or ``n:m``
    (ssgr's ``n`` is the number kept per group; llm-compressor's ``prune_n`` the number pruned)."""
    if m:
        return 0.0, m - n, m
    return float(sparsity or 0.0), 0, 0


def llmcompressor_sparsify(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    prune_n: int,
    prune_m: int,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, float]:
    """llm-compressor 0.14 ``sparsify_weight`` on ``W[r, c]`` with the Hessian ``H[c, c]``.

    Args follow llm-compressor: ``sparsity`` (unstructured fraction, 0 for N:M), ``prune_n``
    pruned of every ``prune_m`` (0, 0 for unstructured), ``blocksize``, ``percdamp``. W and H
    stay untouched (the Linear holds a copy; H is cloned, the peer modifies it).
    Returns ``(Q[r, c], loss)``: the pruned weights (W's dtype and device, detached) and
    llm-compressor's loss. Raises :class:`ssgr.errors.MissingPackageError` without llmcompressor.
    """
    try:
        from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight
    except ImportError:
        raise missing_extra("llmcompressor", "the llm-compressor peer") from None
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype, device=W.device)
    lin.weight.requires_grad_(False).copy_(W)
    loss, Q = sparsify_weight(
        lin, {lin: H.clone()}, sparsity, prune_n, prune_m, blocksize, percdamp, False
    )
    return Q.detach(), float(loss)
