"""Block-structured factors for the Monarch and GS-monomial transitions (seeds 006, 016).

State dimension ``N = r * b``: ``r`` blocks of size ``b``. Two factor families:

- *block-monomial* (GS-monomial): block-diagonal with monomial blocks (permutation x diagonal).
  A block-monomial matrix is itself monomial in N x N, and monomial matrices are closed under
  products, so ``L P_shuffle R`` is one monomial matrix ``(idx, D)`` (column ``j`` has the single
  entry ``D[j]`` at row ``idx[j]``) composed in O(N) by index gathers, the representation that
  ``perm_diag_scan`` scans. (Proposal 016 worries that GS products are not closed; with monomial
  blocks they are: only dense blocks break closure.)
- *block-diagonal with dense blocks* (Monarch): ``M = P^T L P R`` with ``L, R`` block-diagonal.
  Products of Monarch matrices are generally dense, so the parallel form materialises ``M`` for
  the dense scan; ``monarch_apply`` is the O(N b) structured product used by the recurrent step.

Permutations are given as column one-hot indices ``idx`` (``P[idx[j], j] = 1``, i.e. ``(P x)[idx[j]]
= x[j]``). Layout: any leading batch dimensions, then the structure dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .perm_diag_scan import pd_compose


def stride_permutation(r: int, b: int, device: torch.device | None = None) -> Tensor:
    """The perfect shuffle of ``N = r b`` (Monarch's ``P``, GS's shuffle) as column one-hot ``idx``.

    Element ``j = i b + c`` (block ``i``, offset ``c``) moves to ``c r + i``: the reshape-transpose
    ``[r, b] -> [b, r]`` that sends one element of every block to every block.
    """
    j = torch.arange(r * b, device=device)
    return (j % b) * r + j // b


def inverse_permutation(idx: Tensor) -> Tensor:
    """``idx^{-1}`` of a bijective column one-hot index (the transpose permutation)."""
    return torch.empty_like(idx).scatter_(
        -1, idx, torch.arange(idx.shape[-1], device=idx.device).expand_as(idx)
    )


def permute_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``P x`` for a bijective ``idx`` and ``x [..., N, P]``: row ``j`` of ``x`` lands on row ``idx[j]``."""
    inv = inverse_permutation(idx)
    return x.index_select(-2, inv) if inv.dim() == 1 else x.gather(-2, inv[..., None].expand_as(x))


def block_monomial(perm: Tensor, diag: Tensor) -> tuple[Tensor, Tensor]:
    """Block-diagonal monomial matrix as a global monomial ``(idx [..., N], D [..., N])``.

    ``perm [..., r, b]`` (int64): in block ``i`` column ``c`` goes to row ``perm[..., i, c]``;
    ``diag [..., r, b]``: the column scales (``block_i = P_i D_i``).
    """
    if perm.shape != diag.shape or perm.dim() < 2:
        raise ValueError(
            f"perm and diag must both be [..., r, b]; got {tuple(perm.shape)}, {tuple(diag.shape)}"
        )
    r, b = perm.shape[-2:]
    offset = torch.arange(r, device=perm.device)[:, None] * b
    return (perm + offset).flatten(-2), diag.flatten(-2)


def gs_monomial(
    perm_L: Tensor, diag_L: Tensor, shuffle: Tensor, perm_R: Tensor, diag_R: Tensor
) -> tuple[Tensor, Tensor]:
    """``A = L P_shuffle R`` (GS with monomial blocks) as one monomial ``(idx, D)``, in O(N)."""
    L = block_monomial(perm_L, diag_L)
    R = block_monomial(perm_R, diag_R)
    P = (shuffle.expand_as(R[0]), torch.ones_like(R[1]))
    return pd_compose(L, pd_compose(P, R))


def block_diag_dense(blocks: Tensor) -> Tensor:
    """``[..., r, b, b] -> [..., N, N]``: the block-diagonal matrix (for references / STE surrogates)."""
    r, b = blocks.shape[-3], blocks.shape[-1]
    eye = torch.eye(r, dtype=blocks.dtype, device=blocks.device)
    # out[.., i, p, j, q] = eye[i, j] * blocks[.., i, p, q]
    out = eye[:, None, :, None] * blocks[..., :, :, None, :]
    return out.reshape(*blocks.shape[:-3], r * b, r * b)


def block_diag_apply(blocks: Tensor, x: Tensor) -> Tensor:
    """``blockdiag(blocks) @ x`` in O(N b P): ``blocks [..., r, b, b]``, ``x [..., N, P]``."""
    r, b = blocks.shape[-3], blocks.shape[-1]
    xs = x.unflatten(-2, (r, b))  # [..., r, b, P]
    return (blocks @ xs).flatten(-3, -2)


def monarch_dense(L: Tensor, R: Tensor, perm: Tensor) -> Tensor:
    """``M = P^T blockdiag(L) P blockdiag(R)`` as ``[..., N, N]``; ``perm`` is P's column one-hot idx.

    Built as ``monarch_apply`` on the identity's columns: O(N^2 b) rather than O(N^3).
    """
    N = perm.shape[-1]
    eye = torch.eye(N, dtype=L.dtype, device=L.device).expand(*L.shape[:-3], N, N)
    return monarch_apply(L, R, perm, eye)


def monarch_apply(L: Tensor, R: Tensor, perm: Tensor, x: Tensor) -> Tensor:
    """``P^T blockdiag(L) P blockdiag(R) x`` for ``x [..., N, P]`` in O(N b P) (the recurrent step)."""
    y = block_diag_apply(R, x)
    y = permute_rows(y, perm)
    y = block_diag_apply(L, y)
    return permute_rows(y, inverse_permutation(perm))
