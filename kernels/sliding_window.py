"""Causal sliding-window softmax attention: query ``t`` attends to keys ``s`` with ``t - W < s <= t``.

Layout ``q, k [B, T, H, D]``, ``v [B, T, H, Dv]``; scores scaled by ``scale`` (default ``D^-1/2``).
State: a ring buffer of the last ``W`` keys and values, ``(k_buf [B, H, W, D], v_buf [B, H, W, Dv],
pos [])``, ``pos`` the number of tokens seen (int64); the token at absolute position ``p`` sits in slot
``p % W``. Constant size in ``T``. Softmax is permutation invariant over keys, so the slot order
does not matter, only which slots are filled (``slot < pos`` until the buffer has wrapped).

``impl="recurrent"``: the ring-buffer loop (the reference). ``impl="chunk"``: chunks of ``W``
queries, each attending to its own chunk and the previous one (``[W, 2W]`` scores, masked to the
band): ``O(T W)`` work, no ``[T, T]`` matrix. Half-precision inputs are computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("recurrent", "chunk")
State = tuple[Tensor, Tensor, Tensor]


def empty_state(batch: int, heads: int, window: int, d: int, dv: int, device=None, dtype=None) -> State:
    k_buf = torch.zeros(batch, heads, window, d, device=device, dtype=dtype)
    v_buf = torch.zeros(batch, heads, window, dv, device=device, dtype=dtype)
    return k_buf, v_buf, torch.zeros((), dtype=torch.int64, device=device)


def _check(q: Tensor, k: Tensor, v: Tensor, window: int, state: State | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, D] and v [B, T, H, Dv] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if state is not None:
        B, _, H, D = q.shape
        k_buf, v_buf, pos = state
        want = ((B, H, window, D), (B, H, window, v.shape[-1]))
        if (tuple(k_buf.shape), tuple(v_buf.shape)) != want or pos.dim() != 0:
            raise ValueError(
                f"state must be (k_buf {want[0]}, v_buf {want[1]}, pos []); got "
                f"({tuple(k_buf.shape)}, {tuple(v_buf.shape)}, {tuple(pos.shape)})"
            )


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    initial_state: State | None = None,
    impl: str = "chunk",
    scale: float | None = None,
) -> tuple[Tensor, State]:
    """Returns ``(o [B, T, H, Dv], (k_buf, v_buf, pos))``."""
    _check(q, k, v, window, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    cd = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    if initial_state is not None:
        initial_state = (initial_state[0].to(cd), initial_state[1].to(cd), initial_state[2])
    if impl == "recurrent":
        o, (kb, vb, pos) = _recurrent(q, k, v, window, initial_state, scale)
    elif impl == "chunk":
        o, (kb, vb, pos) = _chunk(q, k, v, window, initial_state, scale)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return o.to(out_dtype), (kb.to(out_dtype), vb.to(out_dtype), pos)


def _recurrent(q, k, v, W, state, scale):
    B, T, H, D = q.shape
    k_buf, v_buf, pos = (
        state if state is not None else empty_state(B, H, W, D, v.shape[-1], q.device, q.dtype)
    )
    slots = torch.arange(W, device=q.device)
    outs = []
    for t in range(T):
        slot = int(pos) % W
        k_buf, v_buf = k_buf.clone(), v_buf.clone()
        k_buf[:, :, slot] = k[:, t]
        v_buf[:, :, slot] = v[:, t]
        pos = pos + 1
        valid = slots < pos  # all slots once the buffer has wrapped
        scores = torch.einsum("bhd,bhwd->bhw", q[:, t], k_buf) * scale
        attn = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
        outs.append(torch.einsum("bhw,bhwv->bhv", attn, v_buf))
    return torch.stack(outs, dim=1), (k_buf, v_buf, pos)


def _ordered_context(state: State, W: int) -> tuple[Tensor, Tensor, int]:
    """The ring buffer's tokens in time order, left-padded to ``W``: ``(k [B, H, W, D], v, n_valid)``."""
    k_buf, v_buf, pos = state
    p = int(pos)
    # slot of the oldest of the last W tokens is p % W once wrapped; before that, slots 0..p-1 in order
    shift = -(p % W) if p >= W else W - p
    return torch.roll(k_buf, shift, dims=2), torch.roll(v_buf, shift, dims=2), min(p, W)


def _chunk(q, k, v, W, state, scale):
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    C = -(-T // W)
    pad = C * W - T
    if state is None:
        ctx_k = q.new_zeros(B, H, W, D)
        ctx_v = q.new_zeros(B, H, W, Dv)
        n_ctx, pos0 = 0, 0
    else:
        ctx_k, ctx_v, n_ctx = _ordered_context(state, W)
        pos0 = int(state[2])
    qh, kh, vh = (F.pad(t, (0, 0, 0, 0, 0, pad)).transpose(1, 2) for t in (q, k, v))  # [B, H, C*W, D]
    k_ext = torch.cat([ctx_k, kh], dim=2)  # [B, H, (C+1) W, D]: context chunk, then the sequence
    v_ext = torch.cat([ctx_v, vh], dim=2)
    keys = torch.cat([k_ext[:, :, :-W].unflatten(2, (C, W)), k_ext[:, :, W:].unflatten(2, (C, W))], dim=3)
    vals = torch.cat([v_ext[:, :, :-W].unflatten(2, (C, W)), v_ext[:, :, W:].unflatten(2, (C, W))], dim=3)
    # key j of chunk c sits at relative position c W + j - W; query r at c W + r
    r = torch.arange(W, device=q.device)[:, None]
    j = torch.arange(2 * W, device=q.device)[None, :]
    rel = j - W - r  # key position minus query position
    band = (rel <= 0) & (rel > -W)  # [W, 2W], same for every chunk
    first = band & (j >= W - n_ctx)  # chunk 0: only the filled context slots (context is j < W)
    scores = (qh.unflatten(2, (C, W)) @ keys.transpose(-1, -2)) * scale  # [B, H, C, W, 2W]
    mask = torch.cat([first[None], band[None].expand(C - 1, W, 2 * W)], dim=0)
    attn = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    o = (attn @ vals).flatten(2, 3)[:, :, :T].transpose(1, 2)  # [B, T, H, Dv]

    # final ring buffer: the last W tokens of (context, sequence), slot = absolute position % W
    total = pos0 + T
    last_k = k_ext[:, :, W + T - W : W + T]
    last_v = v_ext[:, :, W + T - W : W + T]
    if total < W:  # fewer than W tokens ever: zero the slots that hold nothing
        filled = torch.arange(W, device=q.device) >= W - total
        last_k, last_v = last_k * filled[:, None], last_v * filled[:, None]
    shift = total % W
    k_buf, v_buf = torch.roll(last_k, shift, dims=2), torch.roll(last_v, shift, dims=2)
    return o, (k_buf, v_buf, torch.tensor(total, dtype=torch.int64, device=q.device))
