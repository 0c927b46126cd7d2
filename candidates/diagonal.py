"""Diagonal transitions ``A_t = diag(a_t)``: the selective (GLA / Mamba-2) baseline of the group,
its negative-eigenvalue and complex variants, and the time-invariant S4D reference.

All four run ``kernels.diag_scan`` (chunkwise in ``forward``, one recurrent step in ``step``) on the
group's shared projections ``q, k [B, T, H, N]``, ``v [B, T, H, P]`` (candidates/_transition.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels.diag_scan import diag_scan

from ._transition import TransitionMixer


@register_candidate(
    "diagonal",
    groups=("transitions",),
    reference="GLA (Yang et al. 2023) per-dimension data-dependent decay; Mamba-2 / SSD chunkwise form",
)
@register_candidate(
    "diagonal-neg",
    groups=("transitions",),
    reference="Grazzi et al. 2025, Unlocking state-tracking in linear RNNs through negative eigenvalues",
    allow_negative=True,
)
class DiagonalMixer(TransitionMixer):
    """``a_t = sigmoid(W_a x_t + b_a) ** (1 / gate_temperature)`` per head and state dim (GLA's
    parameterisation, computed in log space), in (0, 1).

    ``allow_negative`` (``diagonal-neg``): ``a_t <- 2 a_t - 1`` in (-1, 1), the map Grazzi et al.
    apply to Mamba's gate (eigenvalue range doubled, same parameter count). The kernel tracks the
    sign separately from the log-magnitude. The bias is initialised so that the positive gate
    starts near 0.96 (``diagonal``) / its doubled form near 0.92 (``diagonal-neg``).

    ``gate_temperature`` defaults to 1, not GLA's 16: with 16 the gate cannot get near 0 (it would
    need ``logsigmoid`` near -16 * 5), so the doubled gate of ``diagonal-neg`` could never reach
    the eigenvalue -1 that parity needs — Grazzi et al.'s map assumes a gate that spans (0, 1), as
    Mamba's ``exp(-dt A)`` does. Both variants use the same value, so they differ only in the range.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        gate_temperature: float = 1.0,
        allow_negative: bool = False,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        self.gate_temperature, self.allow_negative = gate_temperature, allow_negative
        self.a_proj = nn.Linear(d_model, n_heads * d_state, bias=True)
        start = 0.5 ** (1.0 / 16.0)  # ~0.958, GLA's starting gate
        nn.init.constant_(
            self.a_proj.bias, math.log(start**gate_temperature / (1.0 - start**gate_temperature))
        )

    def decay(self, x: Tensor) -> tuple[Tensor, bool]:
        """``x [..., D] -> (a or log a [..., H, N], whether it is log a)``: log space when positive."""
        log_a = (F.logsigmoid(self.a_proj(x)) / self.gate_temperature).unflatten(
            -1, (self.n_heads, self.d_state)
        )
        if self.allow_negative:
            return 2.0 * torch.exp(log_a) - 1.0, False
        return log_a, True

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        a, is_log = self.decay(x)
        o, _ = diag_scan(q, k, v, a, impl="chunk", chunk_size=self.chunk_size, log_decay=is_log)
        return o

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        a, is_log = self.decay(x_t)
        o, state = diag_scan(
            q[:, None],
            k[:, None],
            v[:, None],
            a[:, None],
            initial_state=state,
            impl="recurrent",
            log_decay=is_log,
        )
        return o[:, 0], state


@register_candidate(
    "s4d",
    groups=("transitions",),
    reference="Gu et al. 2022, On the parameterization and initialization of diagonal state space models (S4D-Real)",
)
class S4DMixer(TransitionMixer):
    """S4D: a linear time-invariant (LTI) diagonal SSM, ``h_t = diag(a) h_{t-1} + B v_t^T``,
    ``y_t = C^T h_t``, with ``a[h, n] = exp(-dt_h * A_n)``, ``B`` and ``C`` learned constants, the same
    at every step — a fixed convolution of ``v_t`` (the input's projection), as S4/S4D are in the
    comparisons it stands for (Mamba's selective-copying table: time-invariant S4 vs selective S6;
    H3's associative recall: S4D).

    S4D-Real initialisation: ``A_n = n + 1`` (parameterised as ``exp(log_A)`` so it stays positive)
    and ``dt_h`` log-uniform in [1e-3, 1e-1] per head, giving decays from ~0.999 to ~0.2.
    ``time_invariant_bc=False`` makes ``B, C`` the group's input-dependent projections ``k_t, q_t``
    (the decay stays fixed): an ablation between S4D and ``diagonal`` (Mamba's selective B and C
    without a selective step size).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        time_invariant_bc: bool = True,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        self.time_invariant_bc = time_invariant_bc
        self.log_A = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(n_heads, 1)
        )
        log_dt = torch.linspace(math.log(1e-3), math.log(1e-1), n_heads)
        self.log_dt = nn.Parameter(log_dt)
        if time_invariant_bc:
            del self.q_proj, self.k_proj
            self.B = nn.Parameter(torch.randn(n_heads, d_state) / math.sqrt(d_state))
            self.C = nn.Parameter(torch.randn(n_heads, d_state) / math.sqrt(d_state))

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.time_invariant_bc:
            return super().qkv(x)
        v = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        shape = (*x.shape[:-1], self.n_heads, self.d_state)
        return self.C.to(x.dtype).expand(shape), self.B.to(x.dtype).expand(shape), v

    def log_decay(self, like: Tensor) -> Tensor:
        """``log a = -dt A`` as ``[H, N]``, broadcast to ``like``'s leading dims."""
        log_a = -torch.exp(self.log_dt)[:, None] * torch.exp(self.log_A)
        return log_a.to(like.dtype).expand(*like.shape[:-2], self.n_heads, self.d_state)

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o, _ = diag_scan(q, k, v, self.log_decay(q), impl="chunk", chunk_size=self.chunk_size, log_decay=True)
        return o

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        q, k, v = q[:, None], k[:, None], v[:, None]
        o, state = diag_scan(
            q, k, v, self.log_decay(q), initial_state=state, impl="recurrent", log_decay=True
        )
        return o[:, 0], state


@register_candidate(
    "complex-diagonal",
    groups=("transitions",),
    reference="LRU (Orvieto et al. 2023) complex diagonal, made input-dependent in magnitude and phase",
)
class ComplexDiagonalMixer(TransitionMixer):
    """``a_t = |a_t| e^{i theta_t}`` per head and state dim, complex state, real readout.

    Magnitude: GLA-style ``|a_t| = sigmoid(W_r x_t + b_r) ** (1/16)`` (< 1). Phase: ``theta_t =
    theta_0 + W_theta x_t`` with ``theta_0`` initialised uniform in [0, pi] per state dim (LRU draws its
    phases from a ring) and ``W_theta`` initialised at zero, so training starts from an LRU-like
    time-invariant rotation and learns how much input-dependence to use. ``k_t`` stays real (the input
    matrix), ``q_t = q_re + i q_im`` is complex (an extra projection, LRU's complex C) and the output is
    ``Re(sum_n q_t[n] h_t[n])``. The state is N x P complex numbers per head: twice the real numbers
    of the real-valued candidates at the same ``d_state`` (measured, and reported as such).
    """

    state_dtype_is_complex = True

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        gate_temperature: float = 16.0,
        max_init_phase: float = math.pi,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        self.gate_temperature = gate_temperature
        self.r_proj = nn.Linear(d_model, n_heads * d_state, bias=True)
        nn.init.zeros_(self.r_proj.bias)
        self.theta_proj = nn.Linear(d_model, n_heads * d_state, bias=True)
        nn.init.zeros_(self.theta_proj.weight)
        with torch.no_grad():
            self.theta_proj.bias.uniform_(0.0, max_init_phase)
        self.q_im_proj = nn.Linear(d_model, n_heads * d_state, bias=False)

    def gates(self, x: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(log |a|, theta, q_re, q_im)``, each ``[..., H, N]``, computed in at least float32."""
        x32 = x if x.dtype == torch.float64 else x.float()
        hn = (self.n_heads, self.d_state)

        def lin(layer: nn.Linear) -> Tensor:
            bias = None if layer.bias is None else layer.bias.to(x32.dtype)
            return F.linear(x32, layer.weight.to(x32.dtype), bias).unflatten(-1, hn)

        log_mag = F.logsigmoid(lin(self.r_proj)) / self.gate_temperature
        return log_mag, lin(self.theta_proj), q.to(x32.dtype), lin(self.q_im_proj)

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Parallel form in real arithmetic (complex elementwise ops are slow on CPU).

        With ``Phi_t = sum_{s<=t} theta_s`` and ``z_t = q_t e^{i Phi_t}``, ``w_j = k_j e^{i Phi_j}``:
        ``Re(q_t^T h_t) = sum_{j<=t} sum_n R_tj[n] (Re z_t Re w_j + Im z_t Im w_j)[n] v_j``, where
        ``R_tj = prod_{j<s<=t} |a_s|`` (the RoPE identity). That is a REAL diagonal scan with 2N state
        dims ``q' = [Re z, Im z]``, ``k' = [Re w, Im w]``, decay ``[|a|, |a|]``; ``step`` keeps the
        complex state. ``Phi`` is a running sum over the whole sequence (bounded phases are what
        cos/sin see, but its rounding error grows like ``T * eps * |Phi|``, as in RoPE).
        """
        log_mag, theta, q_re, q_im = self.gates(x, q)
        phi = torch.remainder(theta, 2 * math.pi).cumsum(dim=1)
        cos, sin = torch.cos(phi), torch.sin(phi)
        k32 = k.to(cos.dtype)
        q2 = torch.cat([q_re * cos - q_im * sin, q_re * sin + q_im * cos], dim=-1)
        k2 = torch.cat([k32 * cos, k32 * sin], dim=-1)
        log_a = torch.cat([log_mag, log_mag], dim=-1)
        o, _ = diag_scan(q2, k2, v, log_a, impl="chunk", chunk_size=self.chunk_size, log_decay=True)
        return o.to(x.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        log_mag, theta, q_re, q_im = self.gates(x_t, q)
        a = torch.polar(torch.exp(log_mag), theta)
        qc = torch.complex(q_re, q_im)
        o, state = diag_scan(
            qc[:, None], k[:, None], v[:, None], a[:, None], initial_state=state, impl="recurrent"
        )
        return o[:, 0].real.to(x_t.dtype), state
