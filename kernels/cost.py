"""Theoretical cost of one token, from an op's algebra: FLOPs and bytes of state traffic.

Each kernel module declares ``token_cost(...)`` next to its code, per head and per token, for the
recurrent form's work (what the algebra promises; a parallel form may do more, and the gap between
the two is what ``harness bench throughput`` shows as ``x base`` against ``x flops``). Conventions:

- a multiply-add is 2 FLOPs; a complex multiply 6, a complex add 2; exp / sigmoid count 1;
- ``fwd_bwd`` is ``3 x fwd`` (the backward redoes the adjoint recurrence and forms the gradients of
  both operands of every product, the usual 2x) plus whatever the backward needs beyond that
  (``extra_bwd_flops``: e.g. a straight-through estimator's dense ``N x N`` gradient);
- state bytes: the recurrent state read and written once per token forward (``2 x state``), and
  three times that forward+backward (forward, adjoint, and the states re-read for the gradients).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCost:
    """FLOPs and state bytes of one token (per head unless scaled), forward and forward+backward."""

    fwd_flops: float = 0.0
    fwd_bwd_flops: float = 0.0
    fwd_bytes: float = 0.0
    fwd_bwd_bytes: float = 0.0

    def __add__(self, other: TokenCost) -> TokenCost:
        return TokenCost(
            self.fwd_flops + other.fwd_flops,
            self.fwd_bwd_flops + other.fwd_bwd_flops,
            self.fwd_bytes + other.fwd_bytes,
            self.fwd_bwd_bytes + other.fwd_bwd_bytes,
        )

    def __mul__(self, k: float) -> TokenCost:
        return TokenCost(
            self.fwd_flops * k, self.fwd_bwd_flops * k, self.fwd_bytes * k, self.fwd_bwd_bytes * k
        )

    __rmul__ = __mul__

    def flops(self, pass_name: str) -> float:
        """FLOPs for a bench pass: ``fwd`` and ``step`` (one recurrent step) or ``fwd_bwd``."""
        return self.fwd_bwd_flops if pass_name == "fwd_bwd" else self.fwd_flops

    def bytes(self, pass_name: str) -> float:
        return self.fwd_bwd_bytes if pass_name == "fwd_bwd" else self.fwd_bytes


def compute(flops: float, extra_bwd_flops: float = 0.0) -> TokenCost:
    """Work with no recurrent state (projections, building a transition)."""
    return TokenCost(flops, 3 * flops + extra_bwd_flops)


def recurrence(
    flops: float, state_numbers: float, elem_bytes: int = 4, extra_bwd_flops: float = 0.0
) -> TokenCost:
    """A recurrence step of ``flops`` on a state of ``state_numbers`` reals (complex: count 2)."""
    b = 2 * state_numbers * elem_bytes
    return TokenCost(flops, 3 * flops + extra_bwd_flops, b, 3 * b)
