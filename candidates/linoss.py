"""Oscillatory transitions: LinOSS (Rusch & Rus 2024) and its input-dependent variant OscGate-SSM (seed 007).

Both run the group's matrix-state recurrence ``h_t = A_t h_{t-1} + k_t v_t^T``, ``y_t = h_t^T q_t``
(candidates/_transition.py) with ``A_t`` block-diagonal in 2x2 oscillator blocks:
``d_state = N = 2 m`` holds ``m`` oscillators per head, state row ``2 j`` the velocity ``z_j`` and row
``2 j + 1`` the position ``x_j`` of oscillator ``j`` (``d_state=16`` -> 8 oscillators x 2).

Discretisation: implicit (LinOSS-IM), ``M = S [[1, -dt a], [dt, 1]]`` with ``S = 1 / (1 + dt^2 a)``
(kernels/oscillatory.py:linoss_im_blocks). IM rather than IMEX because IM is dissipative
(eigenvalue modulus ``sqrt(S) < 1`` for ``a > 0``): it forgets, where IMEX conserves energy.

Choices where LinOSS and the group shape differ: LinOSS injects ``B u_t`` into the velocity only
(through ``M [dt B u; 0]``) and reads the position only (``y = C x``). Here the group's key ``k_t``
drives both components and the query ``q_t`` reads both; since ``M`` is invertible this is LinOSS
with a general (rank-unrestricted) input map per oscillator, at the group's matched state size
``n_heads * d_state * (d_model / n_heads)``.

Parallel form: kernels/oscillatory.py:block_scan, chunkwise with a loop over chunks only: for
``oscgate-ssm`` a log-depth scan of the input-dependent 2x2 blocks inside each chunk, for ``linoss``
(time-invariant) the block powers ``M^0 .. M^L`` and a Toeplitz gather instead of a scan. Recurrent
form: the kernel's reference loop, one step at a time. ``chunk_size`` defaults to 8 (``linoss``)
and 4 (``oscgate-ssm``) rather than the group's 64: the intra-chunk work of these kernels grows with
the chunk length (``O(L)`` per step for the powers, ``O(L log L)`` for the scan), and these were the
fastest at T = 64 on CPU; the chunk loop is then T / L iterations (longer sequences may want more). Blocks are built in float32 for half-precision models and the kernel
computes in float32, so bf16 / fp16 are supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels.oscillatory import block_scan, linoss_im_blocks

from ._transition import TransitionMixer


def _param_dtype(p: Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


class _OscillatorMixer(TransitionMixer):
    """Shared plumbing: 2x2 blocks ``[B or 1, T, H, m, 2, 2]`` from ``blocks(x)``, scanned by block_scan."""

    def __init__(self, d_model: int, n_heads: int, d_state: int, chunk_size: int) -> None:
        if d_state % 2:
            raise ValueError(f"d_state={d_state} must be even: it holds d_state / 2 oscillators x (z, x)")
        super().__init__(d_model, n_heads, d_state, chunk_size)
        self.n_osc = d_state // 2

    def blocks(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def step_sizes(self) -> Tensor:
        """``dt in (0, 1)`` per head and oscillator (sigmoid, as in LinOSS)."""
        return torch.sigmoid(self.dt_raw.to(_param_dtype(self.dt_raw)))

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o, _ = block_scan(q, k, v, self.blocks(x), impl="chunk", chunk_size=self.chunk_size)
        return o.to(x.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        o, new_state = block_scan(
            q[:, None],
            k[:, None],
            v[:, None],
            self.blocks(x_t[:, None]),
            initial_state=state,
            impl="recurrent",
        )
        return o[:, 0].to(x_t.dtype), new_state.to(state.dtype)


@register_candidate(
    "linoss",
    groups=("transitions",),
    reference="Rusch & Rus 2024, Oscillatory State-Space Models (LinOSS-IM): second-order oscillators, implicit discretisation",
)
class LinOSSMixer(_OscillatorMixer):
    """LinOSS-IM: input-independent oscillators ``a = relu(a_raw) >= 0`` and ``dt = sigmoid(dt_raw)``.

    Initialisation as in LinOSS: ``a ~ U[0, 1]``; ``dt_raw ~ N(0, 0.5)`` (``dt`` around 0.5), so the
    per-step decay ``sqrt(S)`` starts between ~0.9 and 1 and the rotation per step below ~0.5 rad.
    Time-invariant: the blocks ``[H, m, 2, 2]`` are built once per call and passed as such, which
    selects the kernel's powers-based chunk form.
    """

    def __init__(self, d_model: int, n_heads: int = 4, d_state: int = 16, chunk_size: int = 8) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        self.a_raw = nn.Parameter(torch.rand(n_heads, self.n_osc))
        self.dt_raw = nn.Parameter(0.5 * torch.randn(n_heads, self.n_osc))

    def blocks(self, x: Tensor) -> Tensor:
        a = F.relu(self.a_raw.to(_param_dtype(self.a_raw)))
        return linoss_im_blocks(a, self.step_sizes())  # [H, m, 2, 2]: time-invariant


@register_candidate(
    "oscgate-ssm",
    groups=("transitions",),
    reference="LinOSS-IM (Rusch & Rus 2024) made selective: input-dependent frequency and damping",
)
class OscGateMixer(_OscillatorMixer):
    """OscGate-SSM (proposal 007): LinOSS-IM blocks with input-dependent frequency and damping.

    ``omega_t = softplus(W_w x_t + b_w)``, ``a_t = omega_t^2``; ``zeta_t = sigmoid(W_z x_t + b_z)``;
    ``A_t = diag(1 - zeta_t) M_IM(a_t, dt)`` (both rows of an oscillator scaled, as in the proposal).
    ``dt = sigmoid(dt_raw)`` is learned per head and oscillator but not input dependent (the proposal
    gates frequency and damping only).

    Stability: every block has spectral radius ``(1 - zeta) sqrt(S) < 1`` for any input. The
    proposal's stronger claim ``||A_t||_2 < 1`` does not hold in the (z, x) coordinates: the IM block
    is not normal (e.g. ``a -> 0`` gives ``[[1, 0], [dt, 1]]``, norm up to 1.62), so products of
    time-varying blocks are bounded by ``prod_t (1 - zeta_t) ||M_t||`` rather than contracting;
    the damping gate keeps them in check in practice (state checked finite at T = 4096 in
    tests/test_kernels_fourier.py).

    Initialisation: ``W_w, W_z`` small (std 0.02 / sqrt(d_model) scale), ``b_w`` so that
    ``omega`` starts log-spaced in [0.1, 1] across oscillators, ``b_z`` so that ``zeta`` starts
    log-spaced in [0.01, 0.2], ``dt_raw = 0`` (``dt = 0.5``).
    """

    def __init__(self, d_model: int, n_heads: int = 4, d_state: int = 16, chunk_size: int = 4) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        m = self.n_osc
        self.omega_proj = nn.Linear(d_model, n_heads * m)
        self.zeta_proj = nn.Linear(d_model, n_heads * m)
        for lin in (self.omega_proj, self.zeta_proj):
            nn.init.normal_(lin.weight, std=0.02)
        omega0 = torch.logspace(math.log10(0.1), math.log10(1.0), m).repeat(n_heads)
        zeta0 = torch.logspace(math.log10(0.01), math.log10(0.2), m).repeat(n_heads)
        with torch.no_grad():
            self.omega_proj.bias.copy_(torch.log(torch.expm1(omega0)))  # softplus^-1
            self.zeta_proj.bias.copy_(torch.log(zeta0 / (1 - zeta0)))  # sigmoid^-1
        self.dt_raw = nn.Parameter(torch.zeros(n_heads, m))

    def blocks(self, x: Tensor) -> Tensor:
        cdt = _param_dtype(self.dt_raw)
        shape = (self.n_heads, self.n_osc)
        omega = F.softplus(self.omega_proj(x).to(cdt)).unflatten(-1, shape)
        zeta = torch.sigmoid(self.zeta_proj(x).to(cdt)).unflatten(-1, shape)
        return linoss_im_blocks(omega * omega, self.step_sizes(), damping=zeta)  # [B, T, H, m, 2, 2]
