"""Scans over the log semiring (logsumexp, +) and the tropical semiring (max, +).

Per batch, head and state dimension ``n`` (seed proposals 014 and 015)::

    l_t[n] = logaddexp(l_{t-1}[n] + g_t[n], k_t[n])                   (log-semiring "sum" of scores)
    h_t[n] = exp(l_{t-1} + g_t - l_t)[n] h_{t-1}[n] + exp(k_t - l_t)[n] v_t      (h_t[n] in R^P)
    o_t    = sum_n q_t[n] h_t[n]

so ``h_t[n] = sum_{s<=t} softmax_s(k_s[n] + sum_{r=s+1..t} g_r[n]) v_s``: a softmax-weighted summary
of the whole history with scores ``k[n]`` and a log-decay ``g <= 0`` (recency bias), and ``l_t`` its
log-normaliser. The state ``(l, h)`` is ``[B, H, N]`` and ``[B, H, N, P]``: the online-softmax state
(running log-normaliser and normalised values), so no quantity ever overflows: every ``exp`` above is
of a number ``<= 0``. The empty state is ``l = -inf, h = 0``.

The tropical scan replaces logaddexp by max: ``m_t = max(m_{t-1} + g_t, k_t)`` and ``h_t`` is the
value at the argmax. Its softened form at temperature ``tau`` is ``tau * logsumexp(. / tau)``, i.e.
the log-semiring scan of ``(k / tau, g / tau)`` (``tropical_scan``); ``tau -> 0`` gives the max.

Layout ``[B, T, H, N]`` for ``q, k, g``, ``[B, T, H, P]`` for ``v``; every op returns
``(o [B, T, H, P], final_state)``. Half-precision inputs are computed in float32 (log-space sums in
fp16 lose the small weights) and the output is cast back.

Implementations:
  - ``"recurrent"``: the loop above (the reference).
  - ``"chunk"``: chunks of ``chunk_size``, all chunks at once. Inside a chunk, with ``C`` the inclusive
    cumulative log-decay and ``x = k - C``, the weight of ``s`` at ``t >= s`` (relative to the chunk's
    own history) is ``exp(x_s - lcse_t)``, ``lcse = logcumsumexp(x)``. Fast path: with ``R`` the
    chunk's max of ``x`` this is ``exp(x_s - R) / cumsum(exp(x - R))_t`` -- ``O(T N)`` exps and one
    ``[L, N] x [N, L]`` matmul per chunk -- which is exact and inside exp's range as long as the
    chunk's range of ``x`` is at most 64 (fp32; 600 in fp64). Where it is not, the exact pairwise
    path (one ``exp`` per ``(t, s, n)`` of ``x_s - lcse_t <= 0``, ``O(T L N)``) is taken instead;
    the candidates bound scores and decays so that the fast path holds. Across chunks, a log-depth
    scan over chunk summaries (``_chunk_starts``, the recurrence's combine made associative) gives
    the state entering each chunk; each position then mixes it with its intra-chunk summary, with
    weights ``exp(. - l_t) <= 1``.
  - ``max_plus_scan``: ``"recurrent"`` and ``"scan"`` (``torch.cummax`` of ``k - C`` over the whole
    sequence, and a gather of the values at the argmax); the ``tau -> 0`` limit, used as a reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("recurrent", "chunk")
MAX_PLUS_IMPLS = ("recurrent", "scan")

State = tuple[Tensor, Tensor]


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, initial_state: State | None) -> None:
    if k.dim() != 4 or q.shape != k.shape or g.shape != k.shape or v.dim() != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            "expected q, k, log_a [B, T, H, N] and v [B, T, H, P] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, log_a {tuple(g.shape)}"
        )
    if initial_state is not None:
        B, _, H, N = k.shape
        l0, h0 = initial_state
        if tuple(l0.shape) != (B, H, N) or tuple(h0.shape) != (B, H, N, v.shape[-1]):
            raise ValueError(
                f"initial_state must be (l [B, H, N], h [B, H, N, P]) = ({(B, H, N)}, {(B, H, N, v.shape[-1])}); "
                f"got ({tuple(l0.shape)}, {tuple(h0.shape)})"
            )


def empty_state(batch: int, heads: int, n: int, p: int, device=None, dtype=None) -> State:
    """The state of an empty history: ``l = -inf`` (log of a zero normaliser), ``h = 0``."""
    l0 = torch.full((batch, heads, n), float("-inf"), device=device, dtype=dtype)
    return l0, torch.zeros(batch, heads, n, p, device=device, dtype=dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def log_semiring_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_a: Tensor,
    initial_state: State | None = None,
    impl: str = "chunk",
    chunk_size: int = 16,
) -> tuple[Tensor, State]:
    """Returns ``(o [B, T, H, P], (l [B, H, N], h [B, H, N, P]))``; ``log_a <= 0`` is the log-decay."""
    _check(q, k, v, log_a, initial_state)
    out_dtype = v.dtype
    cd = _compute_dtype(out_dtype)
    q, k, v, log_a = (t.to(cd) for t in (q, k, v, log_a))
    if initial_state is not None:
        initial_state = (initial_state[0].to(cd), initial_state[1].to(cd))
    if impl == "recurrent":
        o, (l, h) = _log_semiring_recurrent(q, k, v, log_a, initial_state)
    elif impl == "chunk":
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        o, (l, h) = _log_semiring_chunk(q, k, v, log_a, initial_state, chunk_size)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return o.to(out_dtype), (l.to(out_dtype), h.to(out_dtype))


def _log_semiring_recurrent(q, k, v, g, initial_state):
    B, T, H, N = k.shape
    l, h = (
        initial_state if initial_state is not None else empty_state(B, H, N, v.shape[-1], k.device, k.dtype)
    )
    outs = []
    for t in range(T):
        carried = l + g[:, t]
        l_new = torch.logaddexp(carried, k[:, t])
        h = (
            torch.exp(carried - l_new)[..., None] * h
            + torch.exp(k[:, t] - l_new)[..., None] * v[:, t, :, None, :]
        )
        l = l_new
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], h))
    return torch.stack(outs, dim=1), (l, h)


def _lcse_scan(x: Tensor) -> Tensor:
    """``logcumsumexp`` along the last dim by a log-depth (Hillis-Steele) scan of logaddexp.

    Over a short chunk this is a few elementwise ops, much cheaper (forward and backward) on CPU
    than ``torch.logcumsumexp``.
    """
    out, d = x, 1
    while d < x.shape[-1]:
        out = torch.cat([out[..., :d], torch.logaddexp(out[..., d:], out[..., :-d])], dim=-1)
        d *= 2
    return out


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    Put on a batched-matmul output that is then permuted: CPU ``bmm`` clones every small matrix of
    a permuted (non-contiguous) gradient one by one, which costs more than the matmul itself.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def _safe_range(dtype: torch.dtype) -> float:
    """Largest in-chunk score range for which the factorised weights stay inside exp's range.

    The factors are ``exp(x_s - R) >= exp(-range)`` and ``exp(R - lcse_t) <= exp(range)``: at 64 in
    fp32 both are normal numbers (``e^-64 ~ 1.6e-28``) and a query of norm up to ~5e10 times
    ``e^64`` still fits, so the products keep full relative precision. The backward must not square
    a factor (``e^128`` overflows fp32): every intermediate gradient stays within one ``e^range``.
    """
    return 64.0 if dtype == torch.float32 else 600.0


def _chunk_starts(l0: Tensor, h0: Tensor, decay: Tensor, lam: Tensor, u: Tensor) -> State:
    """The state at the start of every chunk, by a log-depth scan over the chunk summaries.

    A segment is summarised by ``(D, lam, u)``: its total log-decay, its log-normaliser and its
    normalised values. Appending segment b to segment a is associative::

        D = D_a + D_b,   lam = logaddexp(lam_a + D_b, lam_b),
        u = exp(lam_a + D_b - lam) u_a + exp(lam_b - lam) u_b          (both weights <= 1)

    The initial state is the first segment (``D = 0``); an inclusive scan over it and the summaries
    of chunks ``0 .. C-2`` gives the state entering chunks ``0 .. C-1``. Only that first segment can
    have ``lam = -inf`` (empty history), and it is only ever a left operand, so no ``-inf - -inf``.
    """
    D = torch.cat([torch.zeros_like(l0)[:, :, None], decay], dim=2)  # [B, H, C, N]
    lam = torch.cat([l0[:, :, None], lam], dim=2)
    u = torch.cat([h0[:, :, None], u], dim=2)  # [B, H, C, N, P]
    d, C = 1, D.shape[2]
    while d < C:
        carried = lam[:, :, :-d] + D[:, :, d:]
        new = torch.logaddexp(carried, lam[:, :, d:])
        u_new = (
            torch.exp(carried - new)[..., None] * u[:, :, :-d]
            + torch.exp(lam[:, :, d:] - new)[..., None] * u[:, :, d:]
        )
        D = torch.cat([D[:, :, :d], D[:, :, :-d] + D[:, :, d:]], dim=2)
        lam = torch.cat([lam[:, :, :d], new], dim=2)
        u = torch.cat([u[:, :, :d], u_new], dim=2)
        d *= 2
    return lam, u


def _log_semiring_chunk(q, k, v, g, initial_state, L, pairwise: bool | None = None):
    B, T, H, N = k.shape
    P = v.shape[-1]
    n_chunks = -(-T // L)
    pad = n_chunks * L - T

    # Zero padding is harmless: padded positions only reach padded outputs (causal), and the final
    # state is read at the last real position, not at the end of the padded chunk.
    def to_chunks(t: Tensor, feature_last: bool) -> Tensor:
        t = F.pad(t, (0, 0, 0, 0, 0, pad)).unflatten(1, (n_chunks, L))  # [B, C, L, H, D]
        # contiguous: CPU batched matmuls on permuted views fall back to a copy per batch element
        return (t.permute(0, 3, 1, 2, 4) if feature_last else t.permute(0, 3, 1, 4, 2)).contiguous()

    qc, kc, gc = (to_chunks(t, False) for t in (q, k, g))  # [B, H, C, N, L]
    vc = to_chunks(v, True)  # [B, H, C, L, P]

    cum = gc.cumsum(dim=-1)  # inclusive cumulative log-decay inside each chunk
    x = kc - cum  # the weight of s at t >= s is exp(x_s - lcse_t) relative to the chunk's own history
    ref = x.detach().amax(dim=-1, keepdim=True)  # per chunk and state dim; cancels exactly
    if pairwise is None:
        pairwise = bool((ref - x.detach().amin(dim=-1, keepdim=True)).max() > _safe_range(x.dtype))
    if pairwise:
        lcse = _lcse_scan(x)  # log-normaliser of the chunk's own history, minus cum
        e_last = torch.exp(x - lcse[..., -1:])
    else:
        # the range is small enough that exp(x - ref) is a normal number: the normaliser is a cumsum
        e = torch.exp(x - ref)  # <= 1
        cs = e.cumsum(dim=-1)
        lcse = ref + torch.log(cs)
        e_last = e / cs[..., -1:]
    lam = lcse + cum

    # chunk summaries (all chunks at once), then the state entering each chunk (log-depth scan)
    u_end = e_last @ vc  # [B, H, C, N, P]; weights exp(x_s - lcse_end) <= 1
    lam_end, cum_end = lam[..., -1], cum[..., -1]  # [B, H, C, N]
    l0, h0 = initial_state if initial_state is not None else empty_state(B, H, N, P, k.device, k.dtype)
    l_start, h_start = _chunk_starts(l0, h0, cum_end[:, :, :-1], lam_end[:, :, :-1], u_end[:, :, :-1])

    # each position: mix the carried state and the intra-chunk summary, weights exp(. - l_t) <= 1
    carried = l_start[..., None] + cum  # [B, H, C, N, L]
    l_pos = torch.logaddexp(carried, lam)
    c_old = torch.exp(carried - l_pos)
    c_new = lam - l_pos  # log of the intra-chunk share, <= 0
    causal = torch.ones(L, L, dtype=torch.bool, device=k.device).tril()
    if pairwise:
        # exact for any range: one exp per (t, s, n), O(T L N) exps
        logits = x[..., None, :] - lcse[..., :, None]  # [B, H, C, N, t, s], <= 0 where s <= t
        w = torch.exp(logits.masked_fill(~causal, float("-inf")))
        scores = ((qc * torch.exp(c_new))[..., None] * w).sum(dim=3)  # [B, H, C, t, s]
    else:
        # exp(c_new_t) exp(x_s - lcse_t) = exp(x_s - ref) exp(ref + cum_t - l_t): one matmul over the
        # state dim. The second factor is exp(c_new_t) / cs_t written without the division: autograd's
        # backward of ``a / cs`` forms ``a / cs**2`` (up to e^(2 * range), past fp32's e^88 at the
        # tropical candidate's tau_end), where that of an exp of ``<= range`` only reaches e^range.
        left = (qc * torch.exp(ref + cum - l_pos)).transpose(-1, -2).contiguous()  # [B, H, C, t, N]
        scores = (left @ e).masked_fill(~causal, 0.0)
    o = scores @ vc + (qc * c_old).transpose(-1, -2).contiguous() @ h_start  # [B, H, C, L, P]
    o = _ContiguousGrad.apply(o).permute(0, 2, 3, 1, 4).reshape(B, n_chunks * L, H, P)[:, :T]

    last = (T - 1) % L
    x_last, lcse_last = x[:, :, -1, :, : last + 1], lcse[:, :, -1, :, last : last + 1]
    u_last = torch.exp(x_last - lcse_last) @ vc[:, :, -1, : last + 1]  # [B, H, N, P]
    h_final = (
        c_old[:, :, -1, :, last, None] * h_start[:, :, -1]
        + torch.exp(c_new[:, :, -1, :, last, None]) * u_last
    )
    return o, (l_pos[:, :, -1, :, last], h_final)


def tropical_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_a: Tensor,
    tau: float,
    initial_state: State | None = None,
    impl: str = "chunk",
    chunk_size: int = 16,
) -> tuple[Tensor, State]:
    """The (max, +) scan softened at temperature ``tau``: ``m_t = tau * logaddexp((m_{t-1} + g_t) / tau, k_t / tau)``.

    The state is ``(m, h)`` in the units of ``k`` (``m -> max`` as ``tau -> 0``), so a state can be
    carried between calls at the same temperature.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (use max_plus_scan for tau = 0), got {tau}")
    scaled = None if initial_state is None else (initial_state[0] / tau, initial_state[1])
    o, (l, h) = log_semiring_scan(q, k / tau, v, log_a / tau, scaled, impl=impl, chunk_size=chunk_size)
    return o, (l * tau, h)


def max_plus_scan(
    q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, initial_state: State | None = None, impl: str = "scan"
) -> tuple[Tensor, State]:
    """The hard tropical scan (``tau = 0``): ``m_t = max(m_{t-1} + g_t, k_t)``, ``h_t`` = value at the argmax.

    Ties go to the newer element. The ``"scan"`` form uses the cumulative log-decay over the whole
    sequence, so it is a reference, exact in float64, not a long-sequence fp32 path.
    """
    _check(q, k, v, log_a, initial_state)
    B, T, H, N = k.shape
    P = v.shape[-1]
    m0, h0 = initial_state if initial_state is not None else empty_state(B, H, N, P, k.device, k.dtype)
    if impl == "recurrent":
        m, h, outs = m0, h0, []
        for t in range(T):
            carried = m + log_a[:, t]
            take_new = k[:, t] >= carried
            m = torch.where(take_new, k[:, t], carried)
            h = torch.where(take_new[..., None], v[:, t, :, None, :], h)
            outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], h))
        return torch.stack(outs, dim=1), (m, h)
    if impl == "scan":
        cum = log_a.cumsum(dim=1)
        best, idx = torch.cummax(k - cum, dim=1)  # [B, T, H, N]
        m = best + cum
        values = torch.gather(
            v[:, :, :, None, :].expand(B, T, H, N, P), 1, idx[..., None].expand(B, T, H, N, P)
        )  # [B, T, H, N, P]: the value at the argmax so far
        from_start = (m0[:, None] + cum) > m  # the carried initial state still wins
        m = torch.where(from_start, m0[:, None] + cum, m)
        h = torch.where(from_start[..., None], h0[:, None], values)
        o = torch.einsum("bthn,bthnp->bthp", q, h)
        return o, (m[:, -1], h[:, -1])
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(MAX_PLUS_IMPLS)}")
