"""Helpers for the op tests: random well- and ill-conditioned Hessians, llm-compressor's peer."""

from __future__ import annotations

import torch


def random_hessian(c: int, tokens: int | None = None, device: str = "cpu", dtype=torch.float32):
    """``X^T X / t`` of correlated random activations ``X[t, c]`` (t = 3c by default)."""
    t = tokens if tokens is not None else 3 * c
    X = torch.randn(t, c, dtype=torch.float64) @ (torch.randn(c, c, dtype=torch.float64) * 0.3 + torch.eye(c, dtype=torch.float64))
    return (X.T @ X / t).to(device=device, dtype=dtype)


def peer_sparsify(W: torch.Tensor, H: torch.Tensor, sparsity: float, prune_n: int, prune_m: int,
                  blocksize: int, percdamp: float = 0.01) -> tuple[torch.Tensor, float]:
    """llm-compressor 0.14 ``sparsify_weight`` on a Linear holding ``W``: ``(Q, loss)``."""
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
    loss, Q = sparsify_weight(
        lin, {lin: H.clone()}, sparsity, prune_n, prune_m, blocksize, percdamp, False
    )
    return Q.detach(), loss
