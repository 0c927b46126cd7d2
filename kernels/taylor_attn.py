"""Causal linear attention with the 2nd-order Taylor kernel (Based, Arora et al. 2024)::

    o_t = sum_{s<=t} (1 + u_ts + u_ts^2 / 2) v_s,      u_ts = q_t . k_s / sqrt(d)

which is linear attention with the feature map ``phi`` of kernels/feature_maps.py
(``phi(q) . phi(k) = 1 + u + u^2 / 2``, ``F = 1 + d + d (d + 1) / 2`` features). State
``S = sum_s phi(k_s) v_s^T`` ``[B, H, F, V]``, constant in T. Layout ``q, k [B, T, H, d]``, ``v [B, T, H, V]``.

``impl="chunk"``: inside a chunk the kernel is evaluated directly from ``u = q k^T / sqrt(d)`` (a
``d``-wide matmul, as Based's own kernels do) instead of through the ``F``-wide features (153 for
d = 16, ~10x the work); the features only carry the state across chunks (``phi(q) S`` and
``S += phi(k)^T V``). ``impl="recurrent"``: the loop over ``phi`` (the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .feature_maps import taylor_dim, taylor_features

IMPLS = ("recurrent", "chunk")


def taylor_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
    output_final_state: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Returns ``(o [B, T, H, V], S [B, H, F, V])``; ``S`` is None if ``output_final_state=False``
    (the chunk form then skips the last chunk's ``F``-wide state update)."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, d] and v [B, T, H, V] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, T, H, d = q.shape
    V = v.shape[-1]
    F = taylor_dim(d)
    if initial_state is not None and tuple(initial_state.shape) != (B, H, F, V):
        raise ValueError(
            f"initial_state must be [B, H, F, V] = {(B, H, F, V)}, got {tuple(initial_state.shape)}"
        )
    S = q.new_zeros(B, H, F, V) if initial_state is None else initial_state
    if impl == "recurrent":
        outs = []
        for t in range(T):
            phi_k = taylor_features(k[:, t])  # [B, H, F]
            S = S + phi_k[..., None] * v[:, t, :, None, :]
            outs.append(torch.einsum("bhf,bhfv->bhv", taylor_features(q[:, t]), S))
        return torch.stack(outs, dim=1), (S if output_final_state else None)
    if impl != "chunk":
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, .]
    scale = d**-0.5
    outs = []
    carried = initial_state is not None
    for start in range(0, T, chunk_size):
        qc, kc, vc = (x[:, :, start : start + chunk_size] for x in (qh, kh, vh))
        u = (qc @ kc.transpose(-1, -2)) * scale
        scores = (1.0 + u + 0.5 * u.square()).tril()  # exact zeros above the diagonal
        o = scores @ vc
        if carried:  # the state is zero before the first chunk of a fresh sequence: skip phi(q) S
            o = o + taylor_features(qc) @ S
        outs.append(o)
        if start + chunk_size < T or output_final_state:
            S = S + taylor_features(kc).transpose(-1, -2) @ vc
        carried = True
    return torch.cat(outs, dim=2).transpose(1, 2), (S if output_final_state else None)
