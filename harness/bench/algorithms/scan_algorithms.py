"""One recurrence, many algorithms: the dense linear recurrence ``h_t = A_t h_{t-1} + b_t``.

This is the ``scans`` microbenchmark family (seed experiment 026, "cyclic reduction vs prefix scan"):
the same map computed five ways, so their error and time can be compared side by side.

Layout: ``A [B, T, H, N, N]``, ``b [B, T, H, N]``, optional ``initial_state [B, H, N]``; returns
``(h [B, T, H, N], h_T [B, H, N])``. ``impl=``:

- ``"sequential"``: the plain loop over t, the reference (T matrix-vector products).
- ``"hillis_steele"``: inclusive log-depth scan over ``(A, b)`` pairs; level ``l`` combines every
  position with the one ``2^l`` earlier. ``~T log2 T`` N x N matrix products.
- ``"blelloch"``: the work-efficient two-sweep scan (up-sweep, then down-sweep of exclusive prefixes)
  over ``(A, b)`` pairs, T padded to a power of two with identities. The down-sweep composes full
  pairs, as the textbook algorithm does for a generic associative operator: ``~2T`` matrix products.
- ``"chunkwise"``: Hillis-Steele inside chunks of ``chunk_size`` (all chunks at once), then a loop over
  chunks carrying the state (one matrix-vector product per chunk), then the carried state applied to
  every position of its chunk. ``~T log2 C`` matrix products.
- ``"cyclic_reduction"``: odd-even reduction. Pairing ``(2i, 2i+1)`` gives the half-length recurrence
  ``h_{2i+1} = (A_{2i+1} A_{2i}) h_{2i-1} + (A_{2i+1} b_{2i} + b_{2i+1})`` on the odd positions; recurse
  (a loop over log2 T levels), then recover the even positions by back-substitution
  ``h_{2i} = A_{2i} h_{2i-1} + b_{2i}``, which needs only matrix-vector products because the
  recurrence is linear in h. ``~T`` matrix products and ``~T`` matrix-vector products in all.

These are forward-only algorithms for benchmarking: the scans update clones in place, so do not
differentiate through them. ``count_ops()`` counts the N x N matrix products and matrix-vector
products each algorithm performs (per batch and head), the "GEMM count" seed 026 compared.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

IMPLS = ("sequential", "hillis_steele", "blelloch", "chunkwise", "cyclic_reduction")


class OpCount:
    """Matrix-matrix (N x N x N) and matrix-vector products per (batch, head) item."""

    def __init__(self) -> None:
        self.matmat = 0
        self.matvec = 0


_COUNTERS: list[OpCount] = []


@contextlib.contextmanager
def count_ops() -> Iterator[OpCount]:
    """Count the products done by the algorithms called inside the block."""
    c = OpCount()
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def _items(x: Tensor, core_dims: int) -> int:
    """Products in a batched op, per (B, H) item: the positional dims beyond B, H (dims 0, 1)."""
    return math.prod(x.shape[2 : x.dim() - core_dims])


def _mm(x: Tensor, y: Tensor) -> Tensor:
    """Batched N x N matrix product (layout [B, H, ..., N, N])."""
    for c in _COUNTERS:
        c.matmat += _items(x, 2)
    return x @ y


def _mv(x: Tensor, v: Tensor) -> Tensor:
    """Batched matrix-vector product (x [B, H, ..., N, N], v [B, H, ..., N])."""
    for c in _COUNTERS:
        c.matvec += _items(v, 1)
    return (x @ v.unsqueeze(-1)).squeeze(-1)


def _check(A: Tensor, b: Tensor, initial_state: Tensor | None) -> None:
    if A.dim() != 5 or A.shape[-1] != A.shape[-2] or b.shape != A.shape[:-1]:
        raise ValueError(
            f"expected A [B, T, H, N, N] and b [B, T, H, N]; got A {tuple(A.shape)}, b {tuple(b.shape)}"
        )
    if initial_state is not None and initial_state.shape != (A.shape[0], A.shape[2], A.shape[3]):
        raise ValueError(
            f"initial_state must be [B, H, N] = {(A.shape[0], A.shape[2], A.shape[3])}, "
            f"got {tuple(initial_state.shape)}"
        )


def dense_linear_scan(
    A: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "cyclic_reduction",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """``h_t = A_t h_{t-1} + b_t`` with ``h_{-1} = initial_state`` (zeros if None).

    Returns ``(h [B, T, H, N], h_T [B, H, N])``.
    """
    _check(A, b, initial_state)
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if A.shape[1] == 0:
        h0 = initial_state if initial_state is not None else b.new_zeros(b.shape[0], b.shape[2], b.shape[3])
        return b, h0
    if impl == "sequential":
        return scan_sequential(A, b, initial_state)
    # The parallel algorithms absorb the initial state into the first input: b_0 += A_0 h_{-1}.
    Ah = A.transpose(1, 2)  # [B, H, T, N, N]
    bh = b.transpose(1, 2)  # [B, H, T, N]
    if initial_state is not None:
        first = _mv(Ah[:, :, 0], initial_state) + bh[:, :, 0]
        bh = torch.cat([first.unsqueeze(2), bh[:, :, 1:]], dim=2)
    fn = {
        "hillis_steele": _hillis_steele,
        "blelloch": _blelloch,
        "chunkwise": lambda a, v: _chunkwise(a, v, chunk_size),
        "cyclic_reduction": _cyclic_reduction,
    }[impl]
    h = fn(Ah, bh).transpose(1, 2)
    return h, h[:, -1]


def scan_sequential(A: Tensor, b: Tensor, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The reference: a loop over t."""
    _check(A, b, initial_state)
    h = b.new_zeros(b.shape[0], b.shape[2], b.shape[3]) if initial_state is None else initial_state
    outs = []
    for t in range(A.shape[1]):
        h = _mv(A[:, t], h) + b[:, t]
        outs.append(h)
    return torch.stack(outs, dim=1), h


def _hillis_steele(A: Tensor, b: Tensor) -> Tensor:
    """Inclusive scan over the time dim (2) of ``A [B, H, T, N, N]``, ``b [B, H, T, N]``; returns h."""
    return _hs_pairs(A, b)[1]


def _hs_pairs(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Hillis-Steele over the dim just before the matrix dims; returns the inclusive (A, b) prefixes."""
    dim = b.dim() - 2
    T = A.shape[dim]
    d = 1
    while d < T:
        # position t (>= d) becomes (A_t, b_t) o (A_{t-d}, b_{t-d}): first the earlier, then the later
        later_A, later_b = A.narrow(dim, d, T - d), b.narrow(dim, d, T - d)
        new_b = _mv(later_A, b.narrow(dim, 0, T - d)) + later_b
        new_A = _mm(later_A, A.narrow(dim, 0, T - d))
        A = torch.cat([A.narrow(dim, 0, d), new_A], dim=dim)
        b = torch.cat([b.narrow(dim, 0, d), new_b], dim=dim)
        d *= 2
    return A, b


def _identity_pad(A: Tensor, b: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Pad the time dim (2) to ``length`` with identity transitions and zero inputs."""
    pad = length - A.shape[2]
    if pad <= 0:
        return A, b
    N = A.shape[-1]
    eye = torch.eye(N, dtype=A.dtype, device=A.device).expand(*A.shape[:2], pad, N, N)
    return torch.cat([A, eye], dim=2), torch.cat([b, b.new_zeros(*b.shape[:2], pad, N)], dim=2)


def _blelloch(A: Tensor, b: Tensor) -> Tensor:
    """Work-efficient exclusive scan of ``(A, b)`` pairs (up-sweep + down-sweep), then one step."""
    T = A.shape[2]
    n = 1 << max(0, (T - 1).bit_length())
    A0, b0 = A, b
    A, b = _identity_pad(A, b, n)
    A, b = A.clone(), b.clone()
    levels = n.bit_length() - 1
    # up-sweep: node i (right child end) absorbs its left sibling's aggregate
    for d in range(levels):
        s = 1 << (d + 1)
        Av = A.view(*A.shape[:2], n // s, s, *A.shape[3:])
        bv = b.view(*b.shape[:2], n // s, s, *b.shape[3:])
        left_A, left_b = Av[:, :, :, s // 2 - 1], bv[:, :, :, s // 2 - 1]
        right_A, right_b = Av[:, :, :, s - 1], bv[:, :, :, s - 1]
        new_b = _mv(right_A, left_b) + right_b
        new_A = _mm(right_A, left_A)
        Av[:, :, :, s - 1] = new_A
        bv[:, :, :, s - 1] = new_b
    # down-sweep: the root gets the identity; a left child inherits its parent's prefix, a right child
    # gets (left child's aggregate) o (parent's prefix)
    N = A.shape[-1]
    A[:, :, n - 1] = torch.eye(N, dtype=A.dtype, device=A.device)
    b[:, :, n - 1] = 0
    for d in reversed(range(levels)):
        s = 1 << (d + 1)
        Av = A.view(*A.shape[:2], n // s, s, *A.shape[3:])
        bv = b.view(*b.shape[:2], n // s, s, *b.shape[3:])
        left_A, left_b = Av[:, :, :, s // 2 - 1].clone(), bv[:, :, :, s // 2 - 1].clone()
        par_A, par_b = Av[:, :, :, s - 1].clone(), bv[:, :, :, s - 1].clone()
        Av[:, :, :, s // 2 - 1] = par_A
        bv[:, :, :, s // 2 - 1] = par_b
        Av[:, :, :, s - 1] = _mm(left_A, par_A)
        bv[:, :, :, s - 1] = _mv(left_A, par_b) + left_b
    # exclusive prefix applied to h_{-1} = 0 is its b part; one more step gives the inclusive state
    excl_b = b[:, :, :T]
    return _mv(A0, excl_b) + b0


def _chunkwise(A: Tensor, b: Tensor, chunk_size: int) -> Tensor:
    """Scan inside chunks (all at once), then carry the state across chunks (loop over chunks)."""
    B, H, T, N = b.shape
    C = min(chunk_size, T)
    nc = -(-T // C)
    Ap, bp = _identity_pad(A, b, nc * C)
    # chunks as an extra positional dim: [B, H, nc, C, ...]; local inclusive prefixes inside each
    # chunk: P_t = A_t ... A_start, loc_t = the state at t if the chunk started from zero
    P, loc = _hs_pairs(Ap.reshape(B, H, nc, C, N, N), bp.reshape(B, H, nc, C, N))
    # carry: state entering chunk c
    h_in = [b.new_zeros(B, H, N)]
    for c in range(nc - 1):
        h_in.append(_mv(P[:, :, c, -1], h_in[-1]) + loc[:, :, c, -1])
    carry = torch.stack(h_in, dim=2)  # [B, H, nc, N]
    h = _mv(P, carry.unsqueeze(3).expand(B, H, nc, C, N)) + loc
    return h.reshape(B, H, nc * C, N)[:, :, :T]


def _cyclic_reduction(A: Tensor, b: Tensor) -> Tensor:
    """Odd-even reduction down to one element, then back-substitution of the even positions."""
    levels: list[tuple[Tensor, Tensor, int]] = []
    while A.shape[2] > 1:
        L = A.shape[2]
        if L % 2:
            A, b = _identity_pad(A, b, L + 1)
        levels.append((A, b, L))
        A_even, A_odd = A[:, :, 0::2], A[:, :, 1::2]
        b_even, b_odd = b[:, :, 0::2], b[:, :, 1::2]
        # reduced pair for odd position 2i+1: (A_{2i+1} A_{2i}, A_{2i+1} b_{2i} + b_{2i+1})
        b = _mv(A_odd, b_even) + b_odd
        A = _mm(A_odd, A_even)
    h = b  # length 1: h_0 = b_0 (h_{-1} = 0 was absorbed)
    for A_l, b_l, L in reversed(levels):
        # h holds the odd positions of this level; even ones: h_{2i} = A_{2i} h_{2i-1} + b_{2i}
        h_prev = torch.cat([torch.zeros_like(h[:, :, :1]), h[:, :, :-1]], dim=2)
        h_even = _mv(A_l[:, :, 0::2], h_prev) + b_l[:, :, 0::2]
        h = torch.stack([h_even, h], dim=3).flatten(2, 3)[:, :, :L]
    return h
