"""Feature maps for kernelised (linear) attention, and rotary positions.

All act on the last dimension, any leading shape (``[B, T, H, d]`` in the candidates).

- FAVOR+ (Choromanski et al. 2021, Performer): positive random features
  ``phi(x) = exp(W x~ - |x~|^2 / 2 - c) / sqrt(m)`` with ``x~ = x / d^(1/4)``, so that
  ``E[phi(q) . phi(k)] = exp(q . k / sqrt(d)) * exp(-2c)``: the softmax kernel up to a constant, which
  cancels in attention's normaliser. ``W`` is ``[m, d]``:
    * dense: ``orthogonal_gaussian`` (blocks of ``d`` orthogonal rows with chi(d) norms, the
      Performer's orthogonal random features);
    * circulant (seed 029): block ``b`` is ``circ(c_b) diag(s)`` with ``c_b ~ N(0, I)`` and a random
      sign diagonal ``s``; each row is marginally ``N(0, I)`` (so the estimator stays unbiased) and
      ``W x`` costs ``O(d log d)`` per block by FFT (``circulant_project``).
  Stabilisers (they cancel in the normaliser, so the estimator is unchanged): for queries the max over
  features per token; for keys a constant, ``max_i |w_i|^2 / 2``, which bounds the exponent by 0 for
  every input because ``w.x - |x|^2/2 = |w|^2/2 - |x - w|^2/2``. A per-token key stabiliser would not
  cancel, and a max over the sequence would not be causal.
- Taylor (Based, Arora et al. 2024): ``phi(x) = [1, x~, x~_i x~_j (i < j), x~_i^2 / sqrt(2)]`` with
  ``x~ = x / d^(1/4)``, so ``phi(q) . phi(k) = 1 + u + u^2 / 2`` with ``u = q . k / sqrt(d)``: the
  2nd-order Taylor expansion of ``exp(u)``, always >= 1/2. The symmetric half of ``x x^T`` is kept
  (``1 + d + d (d + 1) / 2`` features) rather than all ``d^2``: same inner products, half the state.
- Rotary positions (Su et al. 2021) on half-split pairs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """``[m, d]`` Gaussian projection with orthogonal rows inside each block of ``d``, row norms ~ chi(d)."""
    blocks = []
    for _ in range(-(-m // d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
        norms = torch.randn(d, d, generator=generator, dtype=torch.float64).norm(dim=1)
        blocks.append(q.t() * norms[:, None])
    return torch.cat(blocks)[:m].to(dtype)


def circulant_params(
    m: int, d: int, generator: torch.Generator, dtype=torch.float64
) -> tuple[Tensor, Tensor]:
    """First columns ``c [n_blocks, d]`` ~ N(0, I) and one sign diagonal ``s [d]`` in {-1, 1} shared by the blocks.

    Sharing ``s`` lets ``circulant_project`` transform ``s * x`` once per token rather than once per
    block; every row is still marginally N(0, I) (entries ``+-c_i``), which is all the estimator needs.
    """
    nb = -(-m // d)
    c = torch.randn(nb, d, generator=generator, dtype=torch.float64)
    s = torch.randint(0, 2, (d,), generator=generator).to(torch.float64) * 2 - 1
    return c.to(dtype), s.to(dtype)


def circulant_matrix(c: Tensor, s: Tensor, m: int) -> Tensor:
    """The dense ``[m, d]`` matrix of ``circulant_project`` (reference for tests): rows of ``circ(c_b) diag(s)``."""
    nb, d = c.shape
    idx = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d  # C[i, j] = c[(i - j) mod d]
    return (c[:, idx] * s).reshape(nb * d, d)[:m]


def circulant_project(x: Tensor, c: Tensor, s: Tensor, m: int) -> Tensor:
    """``x [..., d] -> [..., m]``: ``circ(c_b) (s * x)`` for every block ``b`` by real FFT.

    ``O(d log d)`` per block (circular convolution), ``2 m / d * d + d`` stored numbers in all.
    """
    d = x.shape[-1]
    if c.shape[-1] != d or s.shape != (d,):
        raise ValueError(
            f"x last dimension {d} must match c [n_blocks, {d}] and s [{d}]; got {tuple(c.shape)}, {tuple(s.shape)}"
        )
    xs = torch.fft.rfft(x * s, n=d)  # [..., d//2+1], once for all blocks
    y = torch.fft.irfft(xs[..., None, :] * torch.fft.rfft(c, n=d), n=d)  # [..., nb, d]
    return y.flatten(-2)[..., :m]


def favor_features(wx: Tensor, xs: Tensor, key_bound: Tensor | float | None) -> Tensor:
    """Positive random features ``exp(W x~ - |x~|^2 / 2 - c) / sqrt(m)`` from ``wx = W x~`` and ``xs = x~``.

    ``key_bound=None``: query features, stabilised per token (``c`` = max over features). Otherwise
    ``c = key_bound = max_i |w_i|^2 / 2``, a constant, so it cancels in the normaliser.
    """
    logits = wx - (xs.square().sum(-1, keepdim=True) / 2 + 0.5 * math.log(wx.shape[-1]))  # 1/sqrt(m) inside
    if key_bound is None:
        logits = logits - logits.detach().amax(dim=-1, keepdim=True)
    else:
        logits = logits - key_bound
    return torch.exp(logits)


def taylor_features(x: Tensor) -> Tensor:
    """``[..., d] -> [..., 1 + d + d (d + 1) / 2]`` with ``phi(q) . phi(k) = 1 + u + u^2 / 2``, ``u = q.k / sqrt(d)``.

    The quadratic part is ``x~_i x~_j`` for ``i <= j``, built as ``d`` slices ``x~_i * x~[i:]`` (no
    gather: its backward would be a scatter-add), with the diagonal terms scaled by ``1 / sqrt(2)``
    (off-diagonal pairs appear twice in ``(q . k)^2``, the diagonal once, and the whole is halved).
    """
    d = x.shape[-1]
    xs = x / d**0.25
    quad = torch.cat([xs[..., i : i + 1] * xs[..., i:] for i in range(d)], dim=-1)
    weight = torch.ones(d * (d + 1) // 2, dtype=x.dtype, device=x.device)
    starts = torch.tensor([i * d - i * (i - 1) // 2 for i in range(d)], device=x.device)
    weight[starts] = 2**-0.5
    return torch.cat([torch.ones_like(xs[..., :1]), xs, quad * weight], dim=-1)


def taylor_dim(d: int) -> int:
    return 1 + d + d * (d + 1) // 2


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate ``x [B, T, H, D]`` by ``pos * base^(-2i/D)`` on (first half, second half) pairs; ``positions [T]``."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, half]
    cos, sin = (a.to(x.dtype)[:, None, :] for a in (angles.cos(), angles.sin()))  # [T, 1, half]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], dim=-1)
