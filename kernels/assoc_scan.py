"""Generic inclusive associative scan, and the dense linear recurrence built on it.

``associative_scan(elems, combine)`` computes the inclusive prefix ``e_0, e_0.e_1, e_0.e_1.e_2, ...``
along one dimension for any associative ``combine(earlier, later)``. Two implementations:

- ``impl="scan"``: Hillis-Steele, log-depth. Level ``l`` combines every element with the one
  ``2^l`` places earlier, all positions at once, so the Python loop runs over ``ceil(log2 T)``
  levels, never over time. Work is ``O(T log T)`` combines (Blelloch would be ``O(T)`` but needs
  two sweeps; at the T of this harness the single sweep is faster in torch).
- ``impl="recurrent"``: the sequential left fold, the reference.

``combine`` receives tuples of tensors that keep the scanned dimension (of equal length on both
sides) and must broadcast over it, e.g. for ``(A, b)`` pairs of the recurrence ``h_t = A_t h_{t-1} + b_t``::

    combine((A1, b1), (A2, b2)) = (A2 @ A1, A2 @ b1 + b2)

which is ``linear_recurrence_scan`` below (layout ``A [B, T, H, N, N]``, ``b [B, T, H, N, P]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

IMPLS = ("scan", "recurrent")

Combine = Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], tuple[Tensor, ...]]


def _check_elems(elems: tuple[Tensor, ...], dim: int) -> tuple[int, int]:
    if not isinstance(elems, tuple | list) or not elems or not all(isinstance(e, Tensor) for e in elems):
        raise ValueError("elems must be a non-empty tuple of tensors")
    ndim = elems[0].dim()
    d = dim % ndim if ndim else 0
    lengths = {e.shape[d] if e.dim() > d else None for e in elems}
    if ndim == 0 or len(lengths) != 1 or None in lengths:
        shapes = [tuple(e.shape) for e in elems]
        raise ValueError(f"every element must have the same length along dim={dim}; got shapes {shapes}")
    return d, lengths.pop()


def associative_scan(
    elems: tuple[Tensor, ...],
    combine: Combine,
    dim: int = 1,
    impl: str = "scan",
) -> tuple[Tensor, ...]:
    """Inclusive prefix ``combine`` along ``dim``; returns a tuple shaped like ``elems``.

    ``combine(earlier, later)`` must be associative (not necessarily commutative): the result at
    position ``t`` is ``combine(...combine(combine(e_0, e_1), e_2)..., e_t)`` up to bracketing.
    """
    elems = tuple(elems)
    d, T = _check_elems(elems, dim)
    if impl == "recurrent":
        return _scan_recurrent(elems, combine, d, T)
    if impl == "scan":
        return _scan_hillis_steele(elems, combine, d, T)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")


def _scan_recurrent(elems: tuple[Tensor, ...], combine: Combine, d: int, T: int) -> tuple[Tensor, ...]:
    if T == 0:
        return elems
    acc = tuple(e.narrow(d, 0, 1) for e in elems)
    outs = [acc]
    for t in range(1, T):
        acc = tuple(combine(acc, tuple(e.narrow(d, t, 1) for e in elems)))
        outs.append(acc)
    return tuple(torch.cat(parts, dim=d) for parts in zip(*outs, strict=True))


def _scan_hillis_steele(elems: tuple[Tensor, ...], combine: Combine, d: int, T: int) -> tuple[Tensor, ...]:
    cur = elems
    offset = 1
    while offset < T:  # ceil(log2 T) levels
        earlier = tuple(e.narrow(d, 0, T - offset) for e in cur)
        later = tuple(e.narrow(d, offset, T - offset) for e in cur)
        combined = tuple(combine(earlier, later))
        cur = tuple(torch.cat([e.narrow(d, 0, offset), c], dim=d) for e, c in zip(cur, combined, strict=True))
        offset *= 2
    return cur


def _affine_combine(earlier: tuple[Tensor, Tensor], later: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    A1, b1 = earlier
    A2, b2 = later
    return A2 @ A1, A2 @ b1 + b2


def linear_recurrence_scan(
    A: Tensor, b: Tensor, h0: Tensor | None = None, impl: str = "scan"
) -> tuple[Tensor, Tensor]:
    """Dense ``h_t = A_t h_{t-1} + b_t``: ``A [B, T, H, N, N]``, ``b [B, T, H, N, P]``, ``h0 [B, H, N, P]``.

    Returns ``(h_all [B, T, H, N, P], h_T [B, H, N, P])``. ``h0`` is folded into the first input
    (``b_0 <- A_0 h0 + b_0``) so the scan itself starts from zero. Real or complex.
    """
    if A.dim() != 5 or b.dim() != 5 or A.shape[-1] != A.shape[-2] or A.shape[:4] != b.shape[:4]:
        raise ValueError(
            f"expected A [B, T, H, N, N] and b [B, T, H, N, P] with matching B, T, H, N; got A {tuple(A.shape)}, "
            f"b {tuple(b.shape)}"
        )
    Bsz, T, H, N, P = b.shape
    if h0 is not None:
        if h0.shape != (Bsz, H, N, P):
            raise ValueError(f"h0 must be [B, H, N, P] = {(Bsz, H, N, P)}, got {tuple(h0.shape)}")
        if T == 0:
            return b, h0
        b = torch.cat([(A[:, 0] @ h0 + b[:, 0])[:, None], b[:, 1:]], dim=1)
    if T == 0:
        return b, b.new_zeros(Bsz, H, N, P)
    if impl == "recurrent":
        # plain loop on h only (cheaper than the generic fold, which also multiplies the A's)
        h = b.new_zeros(Bsz, H, N, P)
        outs = []
        for t in range(T):
            h = A[:, t] @ h + b[:, t]
            outs.append(h)
        h_all = torch.stack(outs, dim=1)
        return h_all, h_all[:, -1]
    if impl != "scan":
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    _, h_all = associative_scan((A, b), _affine_combine, dim=1, impl="scan")
    return h_all, h_all[:, -1]
