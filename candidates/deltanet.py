"""Delta-rule transitions ``A_t = a_t prod_i (I - beta_i k_i k_i^T)``: DeltaNet and its variants.

One class covers DeltaNet, its negative-eigenvalue form, Gated DeltaNet, DeltaProduct-n and the
Newton-Schulz chunk solve; ``oh-deltaproduct`` adds an input-dependent rotation. All run
``kernels.delta_rule`` (chunkwise WY/UT in ``forward``, the recurrent loop in ``step``).

Choices common to the family (where the papers leave room or use extras this shell does not have):
keys AND queries are L2-normalised per head (fla's default ``qk_norm="l2"``; unit keys make
``I - beta k k^T`` a generalised Householder with eigenvalues 1 and ``1 - beta``); no SiLU on q/k, no
short convolution and no output norm (the group shares projections and readout, so only ``A_t``
differs); ``beta_t = sigmoid(W_b x_t + b)`` per head, doubled when negative eigenvalues are allowed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels import delta_rule as delta_ops
from harness.kernels.cost import TokenCost
from harness.kernels.delta_rule import delta_product, delta_rule

from ._transition import TransitionMixer


@register_candidate(
    "deltanet",
    groups=("transitions",),
    reference="Schlag et al. 2021 (DeltaNet); Yang et al. 2024, Parallelizing linear transformers with the "
    "delta rule over sequence length (chunkwise WY/UT form)",
)
@register_candidate(
    "deltanet-neg",
    groups=("transitions",),
    reference="Grazzi et al. 2025, Unlocking state-tracking in linear RNNs through negative eigenvalues "
    "(DeltaNet with beta in (0, 2))",
    allow_negative=True,
)
@register_candidate(
    "gated-deltanet",
    groups=("transitions",),
    reference="Yang et al. 2025, Gated Delta Networks: improving Mamba2 with delta rule",
    gated=True,
)
@register_candidate(
    "deltaproduct-2",
    groups=("transitions",),
    reference="Siems et al. 2025, DeltaProduct: 2 Householder (delta-rule) steps per token, beta in (0, 2)",
    n_householder=2,
    allow_negative=True,
    chunk_size=16,
)
@register_candidate(
    "deltaproduct-3",
    groups=("transitions",),
    reference="Siems et al. 2025, DeltaProduct: 3 Householder (delta-rule) steps per token, beta in (0, 2)",
    n_householder=3,
    allow_negative=True,
    chunk_size=16,
)
@register_candidate(
    "ns-deltanet",
    groups=("transitions",),
    reference="DeltaNet (Yang et al. 2024) with the chunk's triangular (UT) inverse computed by Newton-Schulz iterations (matmul only) instead of a sequential solve",
    solve="newton_schulz",
    chunk_size=16,
)
class DeltaNetMixer(TransitionMixer):
    """``S_t = a_t prod_{i=1..n_h} (I - beta_{t,i} k_{t,i} k_{t,i}^T) S_{t-1} + (writes)``, ``o_t = S_t^T q_t``.

    - ``allow_negative``: ``beta in (0, 2)`` so the Householder eigenvalue ``1 - beta`` reaches (-1, 1)
      (Grazzi et al.); otherwise ``beta in (0, 1)``.
    - ``gated`` (Gated DeltaNet): scalar ``a_t = exp(-exp(A_log) softplus(W_a x_t + dt_bias))`` per head,
      Mamba-2's parameterisation as GDN uses it (``A ~ U(1, 16)``, ``dt`` log-uniform in [1e-3, 1e-1]).
    - ``n_householder`` (DeltaProduct-n): step ``i`` of token ``t`` has its own key, value and beta; the
      first uses the shared projections, the others extra ones (so parameters grow with n). Computed
      as the delta rule over ``n * T`` virtual tokens; ``chunk_size`` counts virtual tokens.
    - ``solve``: ``"trsm"`` (triangular solve) or ``"newton_schulz"`` (ns-deltanet, proposal 043:
      ``ceil(log2 chunk)`` Newton-Schulz steps, exact since the strictly-lower part is nilpotent, so
      ns-deltanet computes deltanet's map with matmuls only; same parameters, same outputs).
    - presets ``chunk_size=16`` for ns-deltanet and deltaproduct-2/3 (the group default is 64). The
      chunk length never changes the map, only speed: Newton-Schulz costs ``O(L^3 log L)`` per chunk
      against the solve's ``O(L^2 (N + P))`` (~3x slower at 64 on CPU), and DeltaProduct's ``n * T``
      virtual tokens make the per-chunk solves dominate at 64. ``--set chunk_size=64`` restores the
      group default (e.g. on tensor-core GPUs).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        allow_negative: bool = False,
        gated: bool = False,
        n_householder: int = 1,
        solve: str = "trsm",
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        if not isinstance(n_householder, int) or n_householder < 1:
            raise ValueError(f"n_householder must be a positive int, got {n_householder!r}")
        if solve not in ("trsm", "newton_schulz"):
            raise ValueError(f"solve must be 'trsm' or 'newton_schulz', got {solve!r}")
        self.allow_negative, self.gated, self.n_householder, self.solve = (
            allow_negative,
            gated,
            n_householder,
            solve,
        )
        self.beta_proj = nn.Linear(d_model, n_heads * n_householder, bias=True)
        if n_householder > 1:
            self.extra_k_proj = nn.Linear(d_model, (n_householder - 1) * n_heads * d_state, bias=False)
            self.extra_v_proj = nn.Linear(d_model, (n_householder - 1) * d_model, bias=False)
        if gated:
            self.a_proj = nn.Linear(d_model, n_heads, bias=False)
            self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1.0, 16.0)))
            dt = torch.exp(torch.empty(n_heads).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    # -- per-token quantities ---------------------------------------------------------------------
    def householder_inputs(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor):
        """``q [..., H, N]`` (normalised), ``k [..., n, H, N]`` (normalised), ``v [..., n, H, P]``,
        ``beta [..., n, H]``, ``decay [..., H]`` or None."""
        n, H = self.n_householder, self.n_heads
        if n > 1:
            k = torch.cat(
                [k[..., None, :, :], self.extra_k_proj(x).unflatten(-1, (n - 1, H, self.d_state))], -3
            )
            v = torch.cat(
                [v[..., None, :, :], self.extra_v_proj(x).unflatten(-1, (n - 1, H, self.head_dim))], -3
            )
        else:
            k, v = k[..., None, :, :], v[..., None, :, :]
        beta = torch.sigmoid(self.beta_proj(x)).unflatten(-1, (n, H))
        if self.allow_negative:
            beta = 2.0 * beta
        decay = None
        if self.gated:
            dt = F.softplus(self.a_proj(x) + self.dt_bias)
            decay = torch.exp(-torch.exp(self.A_log) * dt)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, decay

    def run(self, q, k, v, beta, decay, state=None, impl: str = "chunk"):
        """The kernel call; ``k, v, beta`` carry the Householder axis after time."""
        kw = {"impl": impl, "chunk_size": self.chunk_size, "solve": self.solve}
        if self.n_householder == 1:
            return delta_rule(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], decay, state, **kw)
        return delta_product(q, k, v, beta, decay, state, **kw)

    # -- the two forms ----------------------------------------------------------------------------
    def algebra_cost(self) -> TokenCost:
        return self.n_heads * delta_ops.token_cost(self.d_state, self.head_dim, self.n_householder)

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.run(*self.householder_inputs(x, q, k, v))[0]

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        qn, kn, vn, beta, decay = self.householder_inputs(x_t, q, k, v)
        o, state = self.run(
            qn[:, None], kn[:, None], vn[:, None], beta[:, None], None if decay is None else decay[:, None],
            state, impl="recurrent",
        )  # fmt: skip
        return o[:, 0], state


def rotate_pairs(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate consecutive pairs ``(x[2m], x[2m+1])`` of the last dim by ``angle[..., m]`` (broadcast)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([c * x0 - s * x1, s * x0 + c * x1], dim=-1).flatten(-2)


@register_candidate(
    "oh-deltaproduct",
    groups=("transitions",),
    reference="DeltaProduct (Siems et al. 2025) with an oscillatory rotation before each Householder step: rotation x reflection per token",
)
class OHDeltaProductMixer(DeltaNetMixer):
    """``h_t = R(theta_t) [(I - beta_t k_t k_t^T) h_{t-1} + beta_t k_t v_t^T]``, ``o_t = h_t^T q_t``.

    ``A_t = R(theta_t) (I - beta k k^T)`` with ``R`` block-diagonal 2x2 rotations of the state dim
    (pairs ``(2m, 2m+1)``), angles ``theta_t = theta_0 + W_theta x_t`` (``theta_0 ~ U(0, pi)`` per pair,
    ``W_theta`` initialised at 0: an oscillator bank that learns input dependence). The write is
    rotated with the state (the rotation acts on the whole delta update). Derivation of the parallel
    form: the rotations commute, so with ``Phi_t = R(phi_t)``, ``phi_t = sum_{s<=t} theta_s``,
    ``h~_t = Phi_t^T h_t`` obeys ``h~_t = Phi_{t-1}^T (I - beta k k^T) Phi_{t-1} h~_{t-1} + beta Phi_{t-1}^T k v^T``
    (since ``Phi_t^T R_t = Phi_{t-1}^T``), i.e. a plain delta rule with keys ``k^_t = Phi_{t-1}^T k_t``, and
    ``o_t = h~_t^T (Phi_t^T q_t)``: rotated keys and queries as in RoPE, offset by one step for keys.
    ``beta in (0, 2)`` by default (DeltaProduct's choice); ``n_householder`` Householder steps per token
    share the token's rotation (default 1, as specified for 020).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        allow_negative: bool = True,
        gated: bool = False,
        n_householder: int = 1,
        solve: str = "trsm",
        max_init_angle: float = math.pi,
    ) -> None:
        if d_state % 2:
            raise ValueError(f"oh-deltaproduct rotates pairs of state dims: d_state={d_state} must be even")
        super().__init__(d_model, n_heads, d_state, chunk_size, allow_negative, gated, n_householder, solve)
        self.theta_proj = nn.Linear(d_model, n_heads * d_state // 2, bias=True)
        nn.init.zeros_(self.theta_proj.weight)
        with torch.no_grad():
            self.theta_proj.bias.uniform_(0.0, max_init_angle)

    def angles(self, x: Tensor) -> Tensor:
        """``theta [..., H, N/2]`` in at least float32 (cos/sin of running sums need the precision)."""
        x32 = x if x.dtype == torch.float64 else x.float()
        w, b = self.theta_proj.weight.to(x32.dtype), self.theta_proj.bias.to(x32.dtype)
        return F.linear(x32, w, b).unflatten(-1, (self.n_heads, self.d_state // 2))

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        qn, kn, vn, beta, decay = self.householder_inputs(x, q, k, v)
        theta = torch.remainder(self.angles(x), 2 * math.pi)
        phi = theta.cumsum(dim=1)  # [B, T, H, N/2]
        q_hat = rotate_pairs(qn.to(phi.dtype), -phi)
        k_hat = rotate_pairs(kn.to(phi.dtype), -(phi - theta)[:, :, None])  # Phi_{t-1}^T k
        return self.run(q_hat, k_hat, vn, beta, decay)[0].to(x.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        qn, kn, vn, beta, decay = self.householder_inputs(x_t, q, k, v)
        theta = self.angles(x_t)  # [B, H, N/2]
        # o = (R h')^T q = h'^T (R^T q), h' the delta-updated state; then rotate the state itself
        q_rot = rotate_pairs(qn.to(theta.dtype), -theta).to(qn.dtype)
        o, state = self.run(
            q_rot[:, None], kn[:, None], vn[:, None], beta[:, None], None if decay is None else decay[:, None],
            state, impl="recurrent",
        )  # fmt: skip
        state = rotate_pairs(state.transpose(-1, -2), theta[:, :, None].to(state.dtype)).transpose(-1, -2)
        return o[:, 0], state
