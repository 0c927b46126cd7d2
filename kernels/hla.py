"""Masked second-order Higher-order Linear Attention (Zhang, Qin & Gu 2025, arXiv:2510.27258; trick 222).

The paper's strictly causal second-order output (its Theorem 3.1) is ``o_t = q_t^T (S_t C_t - G_t)``
with prefix summaries ``S_t = sum_{i<=t} k_i k_i^T``, ``C_t = sum_{j<=t} q_j v_j^T`` and the causal
correction ``G_t = sum_{i<=t} k_i k_i^T C_{i-1}``; expanded,

    o_t = sum_{i <= j <= t} (q_t . k_i)(k_i . q_j) v_j^T .

We keep the two summaries that this needs, not five: ``P_t := S_t C_t - G_t`` obeys
``P_t = P_{t-1} + S_t q_t v_t^T`` (since ``S_t C_t - S_{t-1} C_{t-1} - k_t k_t^T C_{t-1} = S_t q_t v_t^T``),
so with ``k~_j := S_j q_j = sum_{i<=j} (k_i . q_j) k_i``::

    o_t = sum_{j<=t} (q_t . k~_j) v_j          (linear attention with keys k~)
    k~_j = sum_{i<=j} (q_j . k_i) k_i          (linear attention with values k)

Two chained causal linear attentions, each chunkwise (kernels/linear_attn.py): no loop over time.
State ``(S [B, H, K, K], P [B, H, K, V])``: ``S`` is the key second moment, ``P`` the masked cross
summary (the paper's ``S C - G``; its denominator ``S m - h`` is the same with a value column of
ones, which callers append to ``v``). Unnormalised and undecayed, as in the paper's base form.

``impl="recurrent"``: the loop ``S += k k^T; P += (S q) v^T; o = P^T q`` (the reference);
``impl="chunk"``: the two chunked linear attentions. Layout ``q, k [B, T, H, K]``, ``v [B, T, H, V]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .linear_attn import linear_attention

IMPLS = ("recurrent", "chunk")
State = tuple[Tensor, Tensor]


def _check(q: Tensor, k: Tensor, v: Tensor, initial_state: State | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, K] and v [B, T, H, V] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if initial_state is not None:
        B, _, H, K = q.shape
        S, P = initial_state
        if tuple(S.shape) != (B, H, K, K) or tuple(P.shape) != (B, H, K, v.shape[-1]):
            raise ValueError(
                f"initial_state must be (S {(B, H, K, K)}, P {(B, H, K, v.shape[-1])}); "
                f"got ({tuple(S.shape)}, {tuple(P.shape)})"
            )


def hla_second_order(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    initial_state: State | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
) -> tuple[Tensor, State]:
    """Returns ``(o [B, T, H, V], (S [B, H, K, K], P [B, H, K, V]))``."""
    _check(q, k, v, initial_state)
    B, T, H, K = q.shape
    S0, P0 = initial_state if initial_state is not None else (None, None)
    if impl == "chunk":
        k_tilde, S = linear_attention(q, k, k, initial_state=S0, impl="chunk", chunk_size=chunk_size)
        o, P = linear_attention(q, k_tilde, v, initial_state=P0, impl="chunk", chunk_size=chunk_size)
        return o, (S, P)
    if impl == "recurrent":
        S = q.new_zeros(B, H, K, K) if S0 is None else S0
        P = q.new_zeros(B, H, K, v.shape[-1]) if P0 is None else P0
        outs = []
        for t in range(T):
            S = S + k[:, t, :, :, None] * k[:, t, :, None, :]
            k_tilde = torch.einsum("bhij,bhj->bhi", S, q[:, t])
            P = P + k_tilde[..., None] * v[:, t, :, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], P))
        return torch.stack(outs, dim=1), (S, P)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
