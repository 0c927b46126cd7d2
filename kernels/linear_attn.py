"""Causal linear attention ``S_t = S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` (no normalisation).

Layout ``[B, T, H, D]``. The state ``S`` is ``[B, H, Dk, Dv]``. ``impl="recurrent"`` is the reference
loop; ``impl="chunk"`` is the chunkwise form: within a chunk a masked ``Q K^T`` matmul, across chunks
the state carried by one matmul per chunk (a Python loop over T / chunk_size chunks, not over T).
"""

from __future__ import annotations

import torch
from torch import Tensor

IMPLS = ("recurrent", "chunk")


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k [B, T, H, Dk] and v [B, T, H, Dv] with matching B, T, H; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Returns ``(o [B, T, H, Dv], final_state [B, H, Dk, Dv])``."""
    _check(q, k, v)
    if impl == "recurrent":
        return linear_attention_recurrent(q, k, v, initial_state)
    if impl == "chunk":
        return linear_attention_chunk(q, k, v, initial_state, chunk_size)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")


def linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    S = q.new_zeros(B, H, Dk, Dv) if initial_state is None else initial_state
    outs = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, dim=1), S


def linear_attention_chunk(
    q: Tensor, k: Tensor, v: Tensor, initial_state: Tensor | None = None, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    S = q.new_zeros(B, H, Dk, Dv) if initial_state is None else initial_state
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
    outs = []
    for start in range(0, T, chunk_size):
        qc, kc, vc = (t[:, :, start : start + chunk_size] for t in (qh, kh, vh))
        L = qc.shape[2]
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)
        outs.append(scores @ vc + qc @ S)
        S = S + kc.transpose(-1, -2) @ vc
    o = torch.cat(outs, dim=2).transpose(1, 2)
    return o, S
