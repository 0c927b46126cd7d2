"""Diagonal-transition linear recurrence (GLA / Mamba-2 / LRU family), per head::

    h_t = diag(decay_t) h_{t-1} + k_t v_t^T          h_t in C^{N x P}
    o_t[p] = sum_n q_t[n] h_t[n, p]                  (o_t = h_t^T q_t, NO conjugation of q)

Layout: ``q, k, decay [B, T, H, N]``, ``v [B, T, H, P]``, state ``[B, H, N, P]``; any of them may be
complex (the readout is the plain bilinear form above: a caller that wants ``Re(conj(q)^T h)`` passes
``conj(q)``). ``decay`` may lie in (0, 1), in (-1, 1), or be complex with ``|decay| <= 1``.

``impl="chunk"`` (SSD / GLA chunkwise form, every chunk at once, loop over chunks only for the
state hand-off). Each decay is split as ``decay = |decay| * u`` with ``u`` a sign (+-1, the parity
trick of Grazzi et al. 2025 for negative eigenvalues) or a unit phase. Inside a chunk, with
``b_i = sum_{s<=i} log|decay_s|`` and ``s_i = prod_{s<=i} u_s``:

- phases/signs are exact unit-modulus factors, folded into ``q_i * s_i`` and ``k_j / s_j``;
- magnitudes enter the intra-chunk weights only as ``exp(b_i - b_j)`` with ``j <= i``, formed one of
  two ways (``intra=``, see ``diag_scan_chunk``): pairwise, with the exponent masked to -inf where
  ``j > i`` BEFORE ``exp`` (every exponent <= 0, safe for any decays, ``O(L^2 N)``); or factorised
  about the chunk's mid log-decay (one matmul), used only where the chunk's total log-decay spread
  keeps every exponent within ``+-SAFE_SPREAD / 2`` (the default halves the chunk, down to 16, until
  that holds, and falls back to pairwise otherwise): nothing overflows on either path;
- the state entering the chunk is read with ``exp(b_i)`` and the chunk's own contribution to the next
  state with ``exp(b_L - b_j)``, both <= 1.

The ``auto`` choice costs one host sync per call (a max over the chunk spreads). A real decay with no
negative entry skips the sign entirely (also one sync, for the check).

``log|decay|`` is clamped below at ``LOG_MIN[dtype]`` (-30 in float32, -80 in float64): a decay of
exactly 0 (or smaller than ``exp(LOG_MIN)``) acts as ``exp(LOG_MIN)``, which is below the dtype's
resolution next to any O(1) term, and keeps log, its gradient and the cumulative sums finite.
The overflow guarantee needs ``|decay| <= 1`` (not checked: it would cost a device sync).
Half-precision inputs are computed in float32 and the output cast back.

``impl="recurrent"``: the plain loop, the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("chunk", "recurrent")
LOG_MIN = {torch.float32: -30.0, torch.float64: -80.0}
SAFE_SPREAD = {torch.float32: 60.0, torch.float64: 600.0}
MIN_FACTOR_CHUNK = 16


def _check(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, initial_state: Tensor | None) -> None:
    if (
        q.dim() != 4
        or k.shape != q.shape
        or decay.shape != q.shape
        or v.dim() != 4
        or v.shape[:3] != q.shape[:3]
    ):
        raise ValueError(
            "expected q, k, decay [B, T, H, N] and v [B, T, H, P] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, decay {tuple(decay.shape)}, v {tuple(v.shape)}"
        )
    if initial_state is not None:
        Bsz, _, H, N = q.shape
        want = (Bsz, H, N, v.shape[-1])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must be [B, H, N, P] = {want}, got {tuple(initial_state.shape)}")


def compute_dtype(*tensors: Tensor | None) -> tuple[torch.dtype, torch.dtype]:
    """(dtype to compute in, dtype to return): half precisions are computed in float32."""
    out = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            out = torch.promote_types(out, t.dtype)
    if out in (torch.float16, torch.bfloat16):
        return torch.float32, out
    return out, out


def diag_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    decay: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
    log_decay: bool = False,
) -> tuple[Tensor, Tensor]:
    """Returns ``(o [B, T, H, P], final_state [B, H, N, P])``; see the module docstring.

    ``log_decay=True``: ``decay`` holds ``log a`` (real, <= 0) of positive decays ``a = exp(decay)``;
    callers that parameterise the decay in log space (GLA, S4D, Mamba) skip an exp/log round trip.
    """
    _check(q, k, v, decay, initial_state)
    if log_decay and decay.is_complex():
        raise ValueError(f"log_decay=True needs a real log-decay, got {decay.dtype}")
    if impl == "recurrent" or (impl in IMPLS and q.shape[1] == 0):  # T = 0: nothing to chunk
        return diag_scan_recurrent(q, k, v, torch.exp(decay) if log_decay else decay, initial_state)
    if impl == "chunk":
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        return diag_scan_chunk(q, k, v, decay, initial_state, chunk_size, log_decay=log_decay)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")


def diag_scan_recurrent(
    q: Tensor, k: Tensor, v: Tensor, decay: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    cdt, odt = compute_dtype(q, k, v, decay, initial_state)
    q, k, v, decay = (t.to(cdt) for t in (q, k, v, decay))
    Bsz, T, H, N = q.shape
    h = q.new_zeros(Bsz, H, N, v.shape[-1]) if initial_state is None else initial_state.to(cdt)
    outs = []
    for t in range(T):
        h = decay[:, t, :, :, None] * h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], h))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(Bsz, 0, H, v.shape[-1], dtype=cdt)
    return o.to(odt), h.to(odt)


def split_decay(decay: Tensor, log_min: float) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``decay -> (log|decay| clamped at log_min, sign or None, angle or None)``.

    The sign (+-1, real decays with a negative entry) or the angle (complex decays) is tracked apart
    from the magnitude. Written so that decay == 0 gives finite values and finite gradients (no
    log(0), no atan2(0, 0)); a zero decay gets sign +1 / angle 0.
    """
    tiny = math.exp(log_min)
    mag = decay.abs()
    la = torch.log(mag.clamp_min(tiny))
    if decay.is_complex():
        ok = mag > tiny
        re = torch.where(ok, decay.real, torch.ones_like(decay.real))
        im = torch.where(ok, decay.imag, torch.zeros_like(decay.imag))
        return la, None, torch.atan2(im, re)
    if bool((decay < 0).any()):  # the sign is piecewise constant: no gradient is lost
        return la, torch.where(decay < 0, -torch.ones_like(decay), torch.ones_like(decay)), None
    return la, None, None


def max_chunk_spread(la: Tensor, L: int) -> float:
    """Largest total ``-sum log|decay|`` over one chunk of length ``L`` (``la [B, H, T, N]``)."""
    with torch.no_grad():
        T = la.shape[2]
        pad = -T % L
        tot = F.pad(la, (0, 0, 0, pad)).unflatten(2, (-1, L)).sum(3)
        return float(-tot.min()) if tot.numel() else 0.0


def diag_scan_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    decay: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    intra: str = "auto",
    log_decay: bool = False,
) -> tuple[Tensor, Tensor]:
    """Chunkwise form; ``intra`` picks how the within-chunk decay weights are formed:

    - ``"pairwise"``: ``exp(b_i - b_j)`` for every pair, masked before ``exp`` (``[L, L, N]`` per chunk):
      safe for any decays, but ``O(L^2 N)`` elementwise work;
    - ``"factor"``: ``(q_i e^{b_i - m}) . (k_j e^{m - b_j})`` with ``m`` the chunk's mid log-decay, one
      matmul per chunk. Every exponent lies in ``[-spread/2, spread/2]`` where ``spread`` is the chunk's
      total ``-sum log|decay|``, so it is only used when ``spread <= SAFE_SPREAD[dtype]``;
    - ``"auto"`` (default): halve the chunk (down to ``MIN_FACTOR_CHUNK``) until every chunk's spread is
      safe and use ``"factor"``; if even that is not safe (decays near 0), ``"pairwise"`` at that size.
      Exactness never depends on the choice, only speed.
    """
    if intra not in ("auto", "factor", "pairwise"):
        raise ValueError(f"unknown intra {intra!r}; allowed: auto, factor, pairwise")
    cdt, odt = compute_dtype(q, k, v, decay, initial_state)
    real_dt = torch.empty((), dtype=cdt).real.dtype
    Bsz, T, H, N = q.shape
    P = v.shape[-1]
    q, k, v = (t.to(cdt).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
    decay = decay.to(cdt if decay.is_complex() else real_dt).transpose(1, 2)
    if log_decay:
        la, sign, angle = decay.clamp_min(LOG_MIN.get(real_dt, -30.0)), None, None
    else:
        la, sign, angle = split_decay(decay, LOG_MIN.get(real_dt, -30.0))
    safe = SAFE_SPREAD.get(real_dt, 60.0)

    L = max(1, min(chunk_size, T))
    if intra == "auto":
        while L > MIN_FACTOR_CHUNK and max_chunk_spread(la, L) > safe:
            L = max(MIN_FACTOR_CHUNK, L // 2)
        intra = "factor" if max_chunk_spread(la, L) <= safe else "pairwise"
    elif intra == "factor" and max_chunk_spread(la, L) > safe:
        raise ValueError(f"intra='factor' is unsafe here: a chunk's log-decay spread exceeds {safe}")
    C = -(-T // L)
    pad = C * L - T

    def chunks(t: Tensor) -> Tensor:  # [B, H, T, D] -> [B, H, C, L, D]; padded steps: no input, decay 1
        return (F.pad(t, (0, 0, 0, pad)) if pad else t).unflatten(2, (C, L))

    q, k, v, la = (chunks(t) for t in (q, k, v, la))
    b = la.cumsum(dim=-2)  # [B, H, C, L, N], within-chunk cumulative log-magnitude, in [b_end, 0]
    b_end = b[..., -1:, :]
    # the cumulative unit factor s_i (sign product or phase), kept as a sign or an angle
    if angle is not None:
        ph = chunks(angle).cumsum(dim=-2)
        ph_end = ph[..., -1:, :]
        inv, end_rel = -ph, ph_end - ph

        def fac(e: Tensor, p: Tensor | None) -> Tensor:  # exp(e) * unit
            return torch.polar(torch.exp(e), p.expand_as(e))
    elif sign is not None:
        ph = (chunks(sign - 1) + 1).cumprod(dim=-2)  # exact +-1; padded steps have sign +1
        ph_end = ph[..., -1:, :]
        inv, end_rel = ph, ph_end * ph

        def fac(e: Tensor, p: Tensor | None) -> Tensor:
            return torch.exp(e) * p
    else:
        ph = ph_end = inv = end_rel = None

        def fac(e: Tensor, p: Tensor | None) -> Tensor:
            return torch.exp(e)

    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if intra == "factor":
        mid = 0.5 * b_end
        scores = (q * fac(b - mid, ph)) @ (k * fac(mid - b, inv)).transpose(-1, -2)
        scores = scores * causal.to(real_dt)  # finite above the diagonal (|exponent| <= safe): mask by mul
    else:  # scores[i, j] = sum_n qs_i[n] ks_j[n] exp(b_i[n] - b_j[n]), masked before exp
        zero = torch.zeros_like(b)
        qs, ks = (q, k) if ph is None else (q * fac(zero, ph), k * fac(zero, inv))
        diff = b.unsqueeze(-2) - b.unsqueeze(-3)  # [B, H, C, L(i), L(j), N]
        gate = torch.exp(torch.where(causal[:, :, None], diff, torch.full((), -math.inf, dtype=diff.dtype)))
        scores = ((qs.unsqueeze(-2) * ks.unsqueeze(-3)) * gate).sum(-1)  # [B, H, C, L, L]
    o = scores @ v

    # chunk-local contribution to the state at the chunk's end, and the chunk's total transition
    local = (k * fac(b_end - b, end_rel)).transpose(-1, -2) @ v  # [B, H, C, N, P]
    a_chunk = fac(b_end, ph_end).squeeze(-2).unsqueeze(-1)  # [B, H, C, N, 1]

    # hand the state across chunks (loop over chunks only), then read it inside each chunk
    h = q.new_zeros(Bsz, H, N, P) if initial_state is None else initial_state.to(cdt)
    entering = []
    for a_c, local_c in zip(a_chunk.unbind(2), local.unbind(2), strict=True):  # unbind: see delta_rule
        entering.append(h)
        h = a_c * h + local_c
    h_in = torch.stack(entering, dim=2)  # [B, H, C, N, P]
    o = o + (q * fac(b, ph)) @ h_in
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2)  # [B, T, H, P]
    return o.to(odt), h.to(odt)


def token_cost(N: int, P: int, complex_state: bool = False, elem_bytes: int = 4):
    """Per head and token: ``h = a * h + k v^T`` (3 NP real; complex decay: 6 NP + 1 NP + 2 NP) and
    the readout ``h^T q`` (2 NP; complex ``Re(q^T h)``: 4 NP). State ``N P`` (complex: 2 N P reals)."""
    from .cost import recurrence

    if complex_state:
        return recurrence(9 * N * P + 4 * N * P, 2 * N * P, elem_bytes)
    return recurrence(5 * N * P, N * P, elem_bytes)
