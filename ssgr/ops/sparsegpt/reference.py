"""Pure-torch reference of SparseGPT (the oracle; any device, float64-capable): llm-compressor
0.14 ``sparsify_weight`` (= IST-DASLab ``fasterprune``) line by line. Registers the ``reference``
backend of ``sparsegpt``.

Shapes: ``W[r, c]`` weights (r output rows, c input columns), ``H[c, c]`` Hessian, ``U[c, c]``
upper Cholesky factor of the damped ``H^-1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._registry import register
from ._common import damped, prepare


def inverse_hessian_factor(H: torch.Tensor) -> torch.Tensor:
    """``U[c, c]`` = upper Cholesky factor of ``H^-1`` (llm-compressor's three steps: Cholesky,
    ``cholesky_inverse``, upper Cholesky). Raises ``torch.linalg.LinAlgError`` if not PD."""
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def sparsegpt_blocks(
    W: torch.Tensor,
    U: torch.Tensor,
    *,
    sparsity: float,
    n_prune: int,
    m: int,
    blocksize: int,
    grid: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """SparseGPT's blocked OBS loop, llm-compressor ``sparsify_weight`` line by line.

    ``W[r, c]`` (updated in place, dead columns already zeroed), ``U[c, c]`` upper Cholesky of the
    damped ``H^-1``. Unstructured (``n_prune == 0``): per block, prune every weight whose
    ``w^2 / U_ii^2`` is <= the ``int(numel * sparsity)``-th smallest (0-based; so k+1 or more,
    with ties). N:M (``n_prune > 0``): at every m-th column of a block, prune the ``n_prune``
    smallest of the m already-updated weights (``torch.topk(largest=False)``).

    ``grid`` (optional) maps each pruned column ``q[r, 1]`` to its quantization grid before the
    error is compensated: SparseGPT's joint sparsification and quantization (Frantar & Alistarh
    2023, section 3.5; IST's ``fasterprune`` with a quantizer attached).

    Returns ``(Q[r, c], keep[r, c] bool, loss)``; Q in W's dtype.
    """
    rows, cols = W.shape
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    losses = torch.zeros(rows, device=W.device, dtype=W.dtype)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = U[i1:i2, i1:i2]
        if n_prune == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            k = int(tmp.numel() * sparsity)
            if k == 0:  # the block's share rounds to no weight: prune none (not the k+1 rule's 1)
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
            else:
                thresh = torch.sort(tmp.flatten())[0][k]
                mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if n_prune != 0 and i % m == 0:
                dg = torch.diag(Hinv1)[i : (i + m)].reshape((1, -1))
                tmp = W1[:, i : (i + m)] ** 2 / dg**2
                mask1.scatter_(1, i + torch.topk(tmp, n_prune, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            if grid is not None:
                q = grid(q.unsqueeze(1)).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~mask1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(U[i1:i2, i2:])
    return W, keep, float(torch.sum(losses).item())


def _reference_factor(H: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    Hd = H.clone()
    Hd.diagonal().add_(damp)
    return inverse_hessian_factor(Hd)


def damped_inverse_factor(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float]:
    """``(U[c, c], fraction used)``: ``U`` the upper Cholesky factor of ``(H + percdamp *
    mean(diag H) * I)^-1`` in H's dtype, with the op's damping retries (x10 per failure,
    ``MAX_DAMPING_TRIES`` tries). Raises :class:`~ssgr.ops.CholeskyError` after the last."""
    return damped(H, percdamp, _reference_factor)


@register("sparsegpt", "reference", devices=("cpu", "cuda"))
def sparsegpt(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, n_prune: int, m: int, blocksize: int,
    percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The whole op in torch, in fp32 (fp64 when W or H is): ``(Q[r, c], keep[r, c] bool, loss,
    damping)``."""
    dtype = torch.float64 if torch.float64 in (W.dtype, H.dtype) else torch.float32
    Wc, Hc = prepare(W, H, dtype)
    U, damping = damped_inverse_factor(Hc, percdamp)
    Q, keep, loss = sparsegpt_blocks(
        Wc, U, sparsity=sparsity, n_prune=n_prune, m=m, blocksize=blocksize
    )
    return Q, keep, loss, damping
