"""Pure-torch reference implementations of the ssgr ops: the oracle every fast path is tested
against. They run on any device and in float64 (pass float64 tensors), and they follow
llm-compressor 0.14 / IST-DASLab SparseGPT line by line where those implement the same math.

Shapes: ``W[r, c]`` weights (r output rows, c input columns), ``H[c, c]`` Hessian (X^T X over
calibration tokens), ``X[t, c]`` activations (t tokens), ``scores[r, c]``.
"""

from __future__ import annotations

import torch

# Token chunk for the Hessian: bounds the upcast copy of a long bf16 trace (32k x 5120 bf16 would
# be 640 MB in fp32) to chunk x c.
HESSIAN_CHUNK = 8192


def hessian_accumulate(H: torch.Tensor, X: torch.Tensor, chunk: int = HESSIAN_CHUNK) -> None:
    """``H[c, c] += X^T X`` for ``X[t, c]``, computed in ``H.dtype`` (fp32, or fp64 as oracle).

    X is upcast chunk by chunk (``chunk`` tokens at a time).
    """
    for s in range(0, X.shape[0], chunk):
        xc = X[s : s + chunk].to(H.dtype)
        H.addmm_(xc.T, xc)


def col_sq_norms_accumulate(S: torch.Tensor, X: torch.Tensor, chunk: int = HESSIAN_CHUNK) -> None:
    """``S[c] += sum_t X[t, c]^2`` (Wanda's statistic, = diag(X^T X)), in ``S.dtype``."""
    for s in range(0, X.shape[0], chunk):
        S.add_(X[s : s + chunk].to(S.dtype).square().sum(0))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask ``[r, c]`` (bool): the n largest of every m consecutive scores of a row.

    ``scores[r, c]`` with ``c % m == 0``. Ties keep the lower column (stable descending sort).
    """
    r, c = scores.shape
    g = scores.reshape(r, c // m, m)
    order = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros(g.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, order, True)
    return keep.reshape(r, c)


def topk_mask(scores: torch.Tensor, n_prune: int, per: str) -> torch.Tensor:
    """Keep mask ``[r, c]`` (bool) pruning the ``n_prune`` smallest scores per row (``per="row"``,
    Wanda's selection) or in the whole matrix (``per="layer"``). Ties prune the lower index
    first (stable ascending sort, as Wanda's ``torch.sort(..., stable=True)``).
    """
    flat = scores.reshape(1, -1) if per == "layer" else scores
    keep = torch.ones(flat.shape, dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        idx = torch.sort(flat, dim=-1, stable=True).indices[:, :n_prune]
        keep.scatter_(1, idx, False)
    return keep.reshape(scores.shape)


def wanda_scores(W: torch.Tensor, col_sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's metric ``|W[r, c]| * sqrt(col_sq_norms[c])`` in the promoted float dtype."""
    dtype = torch.promote_types(W.dtype, col_sq_norms.dtype)
    return W.to(dtype).abs() * col_sq_norms.to(dtype).sqrt().reshape(1, -1)


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
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """SparseGPT's blocked OBS loop, llm-compressor ``sparsify_weight`` line by line.

    ``W[r, c]`` (updated in place, dead columns already zeroed), ``U[c, c]`` upper Cholesky of the
    damped ``H^-1``. Unstructured (``n_prune == 0``): per block, prune every weight whose
    ``w^2 / U_ii^2`` is <= the ``int(numel * sparsity)``-th smallest (0-based; so k+1 or more,
    with ties). N:M (``n_prune > 0``): at every m-th column of a block, prune the ``n_prune``
    smallest of the m already-updated weights (``torch.topk(largest=False)``).

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
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if n_prune != 0 and i % m == 0:
                tmp = W1[:, i : (i + m)] ** 2 / (torch.diag(Hinv1)[i : (i + m)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, n_prune, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
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
