"""Circulant-family transitions: circulant (seed 013), circulant-diagonal (023), cayley-circulant (027),
neumann-orthogonal (028).

All run the group's recurrence ``h_t = A_t h_{t-1} + k_t v_t^T``, ``y_t = h_t^T q_t`` on the shared
projections (candidates/_transition.py), with a real state ``h [N, P]`` per head (``N = d_state``),
the same size as every real-valued candidate of the group.

- ``circulant`` and ``cayley-circulant``: ``A_t`` is a (block-diagonal of) real circulant matrices,
  diagonalised by the FFT; the parallel form is a diagonal scan in the Fourier basis, run in real
  arithmetic (kernels/fourier.py:circulant_scan), the recurrent form materialises ``A_t`` in the real
  basis.
- ``circulant-diagonal`` and ``neumann-orthogonal``: products of the ``A_t`` do not diagonalise in a
  common basis, so the parallel form materialises every ``A_t`` (``N x N``, 16 x 16 by default) and
  runs the chunked dense scan (kernels/dense_scan.py, a work-efficient up/down sweep inside chunks
  with a hand-written backward); the recurrent form applies ``A_t`` through its structure (FFTs,
  diagonal scalings, Neumann matvecs), so parallel == recurrent also checks the materialisation.

Gates are computed in at least float32; the kernels compute half precisions in float32, so every
candidate here runs in bf16 / fp16 (output cast back to the input dtype).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels import dense_scan as dense_scan_ops
from harness.kernels import fourier
from harness.kernels.cost import TokenCost, compute
from harness.kernels.dense_scan import dense_scan
from harness.kernels.fourier import (
    circulant_matrix,
    circulant_matvec,
    circulant_scan,
    dft_matrices,
    n_bins,
    self_conjugate_mask,
)

from ._transition import TransitionMixer


def _lin32(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` in at least float32 (gates feed exponentials, phases and FFTs)."""
    x32 = x if x.dtype == torch.float64 else x.float()
    bias = None if layer.bias is None else layer.bias.to(x32.dtype)
    return F.linear(x32, layer.weight.to(x32.dtype), bias)


def _gate(logits: Tensor, temperature: float) -> Tensor:
    """GLA-style gate ``sigmoid(logits) ** (1 / temperature)`` in (0, 1), computed in log space."""
    return torch.exp(F.logsigmoid(logits) / temperature)


class _CirculantBase(TransitionMixer):
    """``n_blocks`` independent circulant blocks of size ``b = d_state / n_blocks`` per head."""

    def __init__(self, d_model: int, n_heads: int, d_state: int, chunk_size: int, n_blocks: int) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        if n_blocks < 1 or d_state % n_blocks:
            raise ValueError(f"n_blocks={n_blocks} must divide d_state={d_state}")
        self.n_blocks, self.block = n_blocks, d_state // n_blocks
        self.n_bins = n_bins(self.block)
        self.register_buffer("conj_mask", self_conjugate_mask(self.block), persistent=False)

    def bins(self, t: Tensor) -> Tensor:
        """``[..., H * n_blocks * n_bins] -> [..., H, n_blocks, n_bins]``."""
        return t.unflatten(-1, (self.n_heads, self.n_blocks, self.n_bins))

    def eigenvalues(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Half-spectrum eigenvalues in polar form ``(magnitude, phase)``, ``[..., H, n_blocks, n_bins]``."""
        raise NotImplementedError

    def algebra_cost(self) -> TokenCost:
        return self.n_heads * fourier.token_cost(self.d_state, self.head_dim, self.n_blocks)

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # "auto": the Triton kernel on CUDA (kernels/fourier_scan_triton.py), the torch chunk form elsewhere
        o, _ = circulant_scan(q, k, v, self.eigenvalues(x), impl="auto", chunk_size=self.chunk_size)
        return o.to(x.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        lam = self.eigenvalues(x_t[:, None])
        o, new_state = circulant_scan(
            q[:, None], k[:, None], v[:, None], lam, initial_state=state, impl="recurrent"
        )
        return o[:, 0].to(x_t.dtype), new_state.to(state.dtype)


@register_candidate(
    "circulant",
    groups=("transitions",),
    reference="Input-dependent block-circulant transitions, diagonalised by the FFT: a complex diagonal scan in the Fourier domain (circulant structure as in Cheng et al. 2015, circulant projections)",
)
class CirculantMixer(_CirculantBase):
    """Input-dependent circulant ``A_t = F^{-1} diag(lam_t) F`` (per head; ``n_blocks > 1``: a
    block-diagonal of independent circulants), parameterised directly by its eigenvalues as in
    proposal 013 (``lam = r e^{i theta}``, stable by construction).

    Choices: ``r_t = sigmoid(W_r x_t + b_r) ** (1/16)`` (GLA's gate, the same as ``complex-diagonal``,
    so the two differ only in the basis the diagonal lives in; the proposal's plain sigmoid would
    start with decays near 0.5); ``theta_t = theta_0 + W_theta x_t`` with ``theta_0 ~ U[0, max_init_phase]``
    and ``W_theta = 0`` at init. The eigenvalues of a real circulant are Hermitian: only the
    ``b // 2 + 1`` half-spectrum bins are parameterised (``N`` real degrees of freedom per block, as
    many as the first column), and the self-conjugate bins (0 and b/2) get ``theta = 0``, i.e. a
    positive real eigenvalue (the other bins can still reach -r with theta = pi). The proposal's
    block-circulant variant with coupled ``p x p`` blocks per frequency is not diagonal in the
    Fourier basis and is not implemented; ``n_blocks`` gives uncoupled blocks.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        n_blocks: int = 1,
        gate_temperature: float = 16.0,
        max_init_phase: float = math.pi,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size, n_blocks)
        self.gate_temperature = gate_temperature
        n_out = n_heads * n_blocks * self.n_bins
        self.r_proj = nn.Linear(d_model, n_out)
        nn.init.zeros_(self.r_proj.bias)
        self.theta_proj = nn.Linear(d_model, n_out)
        nn.init.zeros_(self.theta_proj.weight)
        with torch.no_grad():
            self.theta_proj.bias.uniform_(0.0, max_init_phase)

    def eigenvalues(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r = _gate(self.bins(_lin32(self.r_proj, x)), self.gate_temperature)
        theta = self.bins(_lin32(self.theta_proj, x)).masked_fill(self.conj_mask, 0.0)
        return r, theta  # polar form, [B, T, H, n_blocks, n_bins] each


@register_candidate(
    "cayley-circulant",
    groups=("transitions",),
    reference="Cayley transform of a skew-circulant generator: exactly orthogonal, FFT-diagonalised transitions (Cayley parameterisation: Helfrich et al. 2018; circulant SSMs: see 'circulant')",
)
class CayleyCirculantMixer(_CirculantBase):
    """``A_t = gamma_t Q_t``, ``Q_t = (I + S_t)^{-1} (I - S_t)`` with ``S_t`` a skew-symmetric circulant.

    ``S_t``'s eigenvalues are ``i omega_j`` with ``omega`` odd (``omega_{n-j} = -omega_j``, zero on the
    self-conjugate bins), so ``Q_t`` is an exactly orthogonal circulant with eigenvalues
    ``(1 - i omega_j) / (1 + i omega_j) = e^{-2 i atan(omega_j)}``, handed to the kernel as magnitude 1
    and phase ``-2 atan(omega_j)``: no matrix inverse, no complex arithmetic. ``omega_t = W_w x_t + b_w`` on the ``b // 2 - 1`` free bins (proposal 027's
    ``floor(n/2)`` parameters less the Nyquist bin, which a real skew-symmetric circulant forces to 0).

    Forgetting (our choice, ``decay_gate=True``): a scalar gate per head and step,
    ``gamma_t = sigmoid(W_g x_t + b_g) ** (1/16)`` in (0, 1), multiplies the orthogonal matrix, so
    every singular value of ``A_t`` is ``gamma_t`` (a scaled orthogonal map; a per-frequency gate, the
    proposal's optional damping, would make this the ``circulant`` candidate with a Cayley phase).
    ``decay_gate=False`` gives the pure, exactly orthogonal proposal (``|lam| = 1``, no forgetting).
    ``b_w`` is initialised so that the rotation angles ``2 atan(omega)`` start uniform in
    ``[0, max_init_phase]``; ``W_w`` starts at zero. The skew-circulant-diagonal variant of the
    proposal (``S = D K D``) is not diagonal in the Fourier basis and is not implemented here.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        n_blocks: int = 1,
        decay_gate: bool = True,
        gate_temperature: float = 16.0,
        max_init_phase: float = math.pi,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size, n_blocks)
        self.decay_gate, self.gate_temperature = decay_gate, gate_temperature
        self.omega_proj = nn.Linear(d_model, n_heads * n_blocks * self.n_bins)
        nn.init.zeros_(self.omega_proj.weight)
        with torch.no_grad():
            angle = torch.empty(self.omega_proj.bias.shape).uniform_(0.0, max_init_phase)
            self.omega_proj.bias.copy_(torch.tan(angle / 2).clamp(max=1e3))
        if decay_gate:
            self.g_proj = nn.Linear(d_model, n_heads)
            nn.init.zeros_(self.g_proj.bias)

    def eigenvalues(self, x: Tensor) -> tuple[Tensor, Tensor]:
        omega = self.bins(_lin32(self.omega_proj, x)).masked_fill(self.conj_mask, 0.0)
        phase = -2.0 * torch.atan(omega)  # (1 - i w) / (1 + i w) = e^{-2 i atan w}, |.| = 1 exactly
        if not self.decay_gate:
            return torch.ones_like(phase), phase
        gamma = _gate(_lin32(self.g_proj, x), self.gate_temperature)  # [B, T, H]
        return gamma[..., None, None].expand_as(phase), phase


@register_candidate(
    "circulant-diagonal",
    groups=("transitions",),
    reference="Products of diagonal and circulant factors A_t = D1(x_t) C(x_t) D2(x_t) (the CDFlow factorisation, Feng & Liao 2021; Huhtanen & Peramaki 2015: products of diagonal and circulant matrices are dense)",
)
class CirculantDiagonalMixer(TransitionMixer):
    """``A_t = D1_t C_t D2_t``: diagonal, circulant, diagonal (proposal 023's ``m = 2`` CD product).

    ``D1, D2 = diag(sigmoid(W x_t + b) ** (1/16))``; ``C_t`` a real circulant with half-spectrum
    eigenvalues ``r e^{i theta}`` parameterised as in ``circulant`` (``|lam| < 1``, self-conjugate bins
    real positive), so ``||A_t||_2 <= max|D1| max|lam| max|D2| < 1``. The proposal's ``tanh`` real
    spectrum (a symmetric circulant) is widened to complex eigenvalues, so that ``circulant`` is the
    special case ``D1 = D2 = I``; the ``1/16`` temperature (GLA) keeps the product of three gates near
    0.9 at init instead of the proposal's 0.125.

    Parallel form: the products ``A_t ... A_s`` are not circulant-diagonal (the proposal's factor
    count grows, its truncated re-approximation would not be exact), so ``A_t`` is materialised
    (``N x N``) and scanned by ``dense_scan`` (option (b) of the proposal: dense at chunk level).
    Recurrent form: ``A_t h = D1 * irfft(lam * rfft(D2 * h))``, never forming ``A_t``.
    """

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
        self.n_bins = n_bins(d_state)
        self.register_buffer("conj_mask", self_conjugate_mask(d_state), persistent=False)
        self.d_proj = nn.Linear(d_model, 2 * n_heads * d_state)
        nn.init.zeros_(self.d_proj.bias)
        self.r_proj = nn.Linear(d_model, n_heads * self.n_bins)
        nn.init.zeros_(self.r_proj.bias)
        self.theta_proj = nn.Linear(d_model, n_heads * self.n_bins)
        nn.init.zeros_(self.theta_proj.weight)
        with torch.no_grad():
            self.theta_proj.bias.uniform_(0.0, max_init_phase)

    def factors(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """``(d1, (r, theta), d2)``: ``[..., H, N]``, the circulant's half spectrum in polar form
        ``[..., H, n_bins]`` each, ``[..., H, N]``."""
        d1, d2 = (
            _gate(_lin32(self.d_proj, x), self.gate_temperature)
            .unflatten(-1, (2, self.n_heads, -1))
            .unbind(-3)
        )
        hb = (self.n_heads, self.n_bins)
        r = _gate(_lin32(self.r_proj, x).unflatten(-1, hb), self.gate_temperature)
        theta = _lin32(self.theta_proj, x).unflatten(-1, hb).masked_fill(self.conj_mask, 0.0)
        return d1, (r, theta), d2

    def transition(self, x: Tensor) -> Tensor:
        """Materialised ``A [..., H, N, N] = D1 C D2`` (first column ``c = irfft(lam)`` by a real DFT matrix)."""
        d1, (r, theta), d2 = self.factors(x)
        _, inv = dft_matrices(self.d_state, r.dtype, r.device)
        c = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=-1) @ inv
        C = circulant_matrix(c)
        return d1[..., :, None] * C * d2[..., None, :]

    def algebra_cost(self) -> TokenCost:
        """Building ``A_t``: the first column by a real DFT (``2 N (N + 2)``), the circulant gather and
        the two diagonal scalings (``3 N^2``); then the dense scan (products are not circulant-diagonal)."""
        N = self.d_state
        return self.n_heads * (
            compute(2 * N * (N + 2) + 3 * N * N) + dense_scan_ops.token_cost(N, self.head_dim)
        )

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o, _ = dense_scan(q, k, v, self.transition(x), impl="chunk", chunk_size=self.chunk_size)
        return o.to(x.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        d1, (r, theta), d2 = self.factors(x_t)  # [B, H, N], [B, H, n_bins] x 2, [B, H, N]
        lam = torch.polar(r, theta)
        h = state.to(d1.dtype)
        h = d1[..., None] * circulant_matvec(lam[..., None], d2[..., None] * h, dim=-2)
        h = h + k.to(h.dtype)[..., :, None] * v.to(h.dtype)[..., None, :]
        o = torch.einsum("bhn,bhnp->bhp", q.to(h.dtype), h)
        return o.to(x_t.dtype), h.to(state.dtype)


@register_candidate(
    "neumann-orthogonal",
    groups=("transitions",),
    reference="Near-orthogonal input-dependent transitions: the Cayley transform with its inverse replaced by a truncated Neumann series (no solve per token)",
)
class NeumannOrthogonalMixer(TransitionMixer):
    """``A_t = gamma_t W_t``, ``W_t = (sum_{j<k} (-S_t)^j) (I - S_t)``: the Cayley transform
    ``(I + S)^{-1} (I - S)`` with the inverse replaced by its ``k``-term Neumann series (proposal 028).

    ``S_t`` is a dense skew-symmetric ``N x N`` matrix per head from a linear map of ``x_t``
    (``N (N - 1) / 2`` entries), scaled to ``rho_max * S / max(||S||_F, rho_max)`` so that
    ``||S||_2 <= ||S||_F <= rho_max < 1`` and the series converges. The proposal bounds the spectral
    norm by power iteration from a random vector; the Frobenius bound is deterministic, exact to
    differentiate and never looser than needed for convergence (``||S||_2 <= ||S||_F``).

    ``W`` is a polynomial in the normal matrix ``S``, hence normal, with eigenvalues
    ``(1 - (-i w)^k)``-scaled rotations: ``|lam| = |1 - (-i w)^k|`` for ``S``'s eigenvalues ``i w``.
    For ``k`` a multiple of 4 that is ``1 - w^k <= 1`` (contractive, the default ``k = 4``); for other
    ``k`` it can exceed 1 by up to ``rho_max^k`` (approximately orthogonal, as the proposal says).
    Forgetting (our choice, ``decay_gate=True``): the same scalar gate as ``cayley-circulant``,
    ``gamma_t = sigmoid(W_g x_t + b_g) ** (1/16)``; ``decay_gate=False`` is the proposal as written.

    Parallel form: ``W_t`` materialised (``k`` matrix products per step, the truncation identical in
    both forms) and scanned by ``dense_scan`` (chunked). Recurrent form: ``W_t h`` by ``k``
    matrix-vector products with ``S_t`` (Horner), never forming ``W_t``. Init: ``W_s`` normal with
    std 0.1 / sqrt(d_model) (the proposal's small Xavier gain), zero bias.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        neumann_terms: int = 4,
        rho_max: float = 0.3,
        decay_gate: bool = True,
        gate_temperature: float = 16.0,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        if neumann_terms < 1:
            raise ValueError(f"neumann_terms={neumann_terms} must be >= 1")
        if not 0.0 < rho_max < 1.0:
            raise ValueError(f"rho_max={rho_max} must lie in (0, 1) for the Neumann series to converge")
        self.neumann_terms, self.rho_max = neumann_terms, rho_max
        self.decay_gate, self.gate_temperature = decay_gate, gate_temperature
        iu = torch.triu_indices(d_state, d_state, offset=1)
        n_upper = iu.shape[1]
        skew_index = torch.zeros(d_state, d_state, dtype=torch.long)  # into [0, u, -u]
        skew_index[iu[0], iu[1]] = torch.arange(1, n_upper + 1)
        skew_index[iu[1], iu[0]] = torch.arange(n_upper + 1, 2 * n_upper + 1)
        self.register_buffer("skew_index", skew_index, persistent=False)
        self.s_proj = nn.Linear(d_model, n_heads * n_upper)
        nn.init.normal_(self.s_proj.weight, std=0.1 / math.sqrt(d_model))
        nn.init.zeros_(self.s_proj.bias)
        if decay_gate:
            self.g_proj = nn.Linear(d_model, n_heads)
            nn.init.zeros_(self.g_proj.bias)

    def skew(self, x: Tensor) -> Tensor:
        """Scaled skew-symmetric ``S [..., H, N, N]`` with ``||S||_F <= rho_max``."""
        upper = _lin32(self.s_proj, x).unflatten(-1, (self.n_heads, -1))  # [..., H, N(N-1)/2]
        norm = math.sqrt(2.0) * upper.norm(dim=-1, keepdim=True)  # ||S||_F from the upper triangle
        upper = upper * (self.rho_max / norm.clamp_min(self.rho_max))
        # one gather from [0, u, -u] places u above, -u below the diagonal, 0 on it
        ext = torch.cat([torch.zeros_like(upper[..., :1]), upper, -upper], dim=-1)
        N = self.d_state
        return torch.gather(ext, -1, self.skew_index.flatten().expand(*ext.shape[:-1], N * N)).unflatten(
            -1, (N, N)
        )

    def gamma(self, x: Tensor) -> Tensor | None:
        return _gate(_lin32(self.g_proj, x), self.gate_temperature) if self.decay_gate else None

    def transition(self, x: Tensor) -> Tensor:
        """Materialised ``A [..., H, N, N] = gamma (sum_{j<k} (-S)^j) (I - S)``.

        With ``Y = -S`` and ``k = 2^p`` the series factorises (binary splitting, as in the proposal):
        ``sum_{j<k} Y^j = prod_{i<p} (I + Y^{2^i})``, so ``A = (I + 2Y + Y^2) prod_{0<i<p} (I + Y^{2^i})``:
        ``2 (p - 1)`` matrix products (2 for the default ``k = 4``) instead of ``k``. Other ``k``: Horner.
        The recurrent form evaluates the same polynomial by Horner on vectors.
        """
        Y = -self.skew(x)
        shape, N = Y.shape, self.d_state
        Y = Y.reshape(-1, N, N)  # 3-D for the fused baddbmm (W + W @ P in one call)
        eye = torch.eye(N, dtype=Y.dtype, device=Y.device)
        g = self.gamma(x)
        k = self.neumann_terms
        if k >= 2 and k & (k - 1) == 0:
            power = Y @ Y
            W = torch.add(eye, Y, alpha=2.0) + power  # (I + Y)^2
            if g is not None:  # the scalar gate folded in before the last products
                W = W * g.reshape(-1, 1, 1)
            while k > 2:
                W = torch.baddbmm(W, W, power)  # W (I + Y^(2^i))
                k //= 2
                if k > 2:
                    power = power @ power
        else:
            series = eye.expand_as(Y)
            for _ in range(k - 1):  # Horner: I + Y (I + Y (I + ...))
                series = torch.baddbmm(eye.expand_as(Y), Y, series)
            W = torch.baddbmm(series, series, Y)  # series (I + Y)
            if g is not None:
                W = W * g.reshape(-1, 1, 1)
        return W.reshape(shape)

    def algebra_cost(self) -> TokenCost:
        """Building ``W_t``: ``2 (p - 1)`` N x N products for ``k = 2^p`` terms (else ``k``), ``2 N^3``
        each, and ``3 N^2`` for the sums and the gate; then the dense scan (products are not Cayley)."""
        N, k = self.d_state, self.neumann_terms
        products = 2 * (k.bit_length() - 2) if k >= 2 and k & (k - 1) == 0 else k
        build = products * 2 * N**3 + 3 * N * N
        return self.n_heads * (compute(build) + dense_scan_ops.token_cost(N, self.head_dim))

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o, _ = dense_scan(q, k, v, self.transition(x), impl="chunk", chunk_size=self.chunk_size)
        return o.to(x.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        S = self.skew(x_t)  # [B, H, N, N]
        h = state.to(S.dtype)
        u = h - S @ h  # (I - S) h
        acc = u
        for _ in range(self.neumann_terms - 1):  # Horner on vectors: u + (-S)(u + (-S)(...))
            acc = u - S @ acc
        g = self.gamma(x_t)
        h = acc if g is None else acc * g[..., None, None]
        h = h + k.to(h.dtype)[..., :, None] * v.to(h.dtype)[..., None, :]
        o = torch.einsum("bhn,bhnp->bhp", q.to(h.dtype), h)
        return o.to(x_t.dtype), h.to(state.dtype)
