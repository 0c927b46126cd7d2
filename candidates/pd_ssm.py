"""PD-SSM: column one-hot x complex diagonal transitions (Terzić et al. 2025)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels import perm_diag_scan as pd_ops
from harness.kernels.cost import TokenCost, compute
from harness.kernels.perm_diag_scan import pd_step, perm_diag_scan

from ._transition import TransitionMixer
from .dense import linear


@register_candidate(
    "pd-ssm",
    groups=("transitions",),
    reference="Terzic et al. 2025 (NeurIPS), Structured Sparse Transition Matrices to Enable State Tracking in State-Space Models (PD-SSM): one-hot column matrix x complex diagonal",
)
class PDSSMMixer(TransitionMixer):
    """``A_t = P_t D_t``: ``P_t`` column one-hot (each column a single 1), ``D_t`` complex diagonal.

    Following the paper (and its released code): ``M_t = sum_k softmax(S x_t)_k M_k`` mixes a learned
    dictionary of ``dict_size`` dense N x N matrices; ``P_t`` is the column-wise hard argmax of
    ``M_t`` over rows, and the backward pass is the straight-through estimator through the column
    softmax ``softmax(M_t, dim=rows)`` (the kernel returns ``dL/dP`` at the hard one-hot, applied to
    the soft matrix). ``D_t = sigmoid(W_m x_t + b_m) * exp(2 pi i sigmoid(W_p x_t + b_p))``, so
    ``|D| < 1`` and ``||A_t h|| <= ||h||``-type BIBO stability holds (a column one-hot matrix with
    ``|D| < 1`` has l1 operator norm < 1). Choices left open by the paper: the magnitude and phase
    generators are single linear layers (the paper's JAX layer; its PyTorch layer uses a GELU MLP),
    and the initial ``D`` is near 1: magnitude bias 4 (|D| ~ 0.98, inside LRU's initial ring
    0.9-0.999, Orvieto et al. 2023) and phase bias -8 (2 pi sigmoid(-8) ~ 0.002 rad per step). The
    paper's phase bias of -2.5 rotates every state by ~0.48 rad per step from the first step on, a
    position-dependent phase the readout learns at the training lengths: measured in the quick tier
    (seed 0), parity beyond the training length fell to 0.60 at T=64 (0.94 with phase bias -8) and
    MQAR stayed at 1/32, the loss stuck at ln 32 (0.18 with both biases changed); ``k_t`` is real (the input matrix B), ``q_t = q_re + i q_im``
    complex (an extra projection, the paper's complex C) and the readout is ``Re(q_t^T h_t)``.

    The scan composes ``(idx, D)`` pairs by index gather and scatter-add in O(N) per combine
    (``kernels.perm_diag_scan``); the state is complex, N x P per head. The hard argmax makes half
    precision unsafe (rounding flips the selected rows) and the state is complex: fp32 / fp64 only.
    """

    state_dtype_is_complex = True
    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        dict_size: int = 8,
        magnitude_bias: float = 4.0,
        phase_bias: float = -8.0,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        H, N = n_heads, d_state
        self.dict_size = dict_size
        self.select = nn.Linear(d_model, H * dict_size, bias=False)
        self.P_dict = nn.Parameter(torch.randn(H, dict_size, N * N) / math.sqrt(N))  # (col, row) order
        self.mag_proj = nn.Linear(d_model, H * N)
        self.phase_proj = nn.Linear(d_model, H * N)
        nn.init.constant_(self.mag_proj.bias, magnitude_bias)
        nn.init.constant_(self.phase_proj.bias, phase_bias)
        self.q_im_proj = nn.Linear(d_model, H * N, bias=False)

    def transition(self, x: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """``x [B, T, D]`` -> ``idx [B, T, H, N]``, complex ``D``, soft ``P`` (None without grad), complex ``q``."""
        H, K, N = self.n_heads, self.dict_size, self.d_state
        s = torch.softmax(linear(x, self.select).unflatten(-1, (H, K)), dim=-1)  # [B, T, H, K]
        # the dictionary is stored transposed (column-major): row selection is a last-dim argmax
        Mt = torch.einsum("bthk,hkn->bthn", s, self.P_dict.to(x.dtype)).unflatten(
            -1, (N, N)
        )  # [.., col, row]
        idx = Mt.argmax(dim=-1)  # hard one-hot per column
        P_soft = torch.softmax(Mt, dim=-1).mT if torch.is_grad_enabled() else None  # [.., row, col]
        mag = torch.sigmoid(linear(x, self.mag_proj)).unflatten(-1, (H, N))
        phase = (2 * math.pi) * torch.sigmoid(linear(x, self.phase_proj)).unflatten(-1, (H, N))
        D = torch.polar(mag, phase)
        qc = torch.complex(q, linear(x, self.q_im_proj).unflatten(-1, (H, N)))
        return idx, D, P_soft, qc

    def algebra_cost(self) -> TokenCost:
        """The paper's parameterisation is dense: ``M_t = sum_k s_k M_k`` (``2 K N^2``) and its column
        argmax (``N^2``); the straight-through column softmax adds ``~5 N^2`` to the backward. The scan
        itself is a complex diagonal scan's cost plus the STE's dense ``dL/dP``."""
        N = self.d_state
        build = compute(2 * self.dict_size * N * N + N * N, extra_bwd_flops=5 * N * N)
        return self.n_heads * (build + pd_ops.token_cost(N, self.head_dim, complex_state=True, ste=True))

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        idx, D, P_soft, qc = self.transition(x, q)
        # "auto": the Triton kernel on CUDA (kernels/pd_scan_triton.py), the torch scan elsewhere
        o, _ = perm_diag_scan(qc, k, v, idx, D, impl="auto", chunk_size=self.chunk_size, P_ste=P_soft)
        return o

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        idx, D, P_soft, qc = self.transition(x_t[:, None], q[:, None])
        P_soft = None if P_soft is None else P_soft[:, 0]
        h = pd_step(idx[:, 0], D[:, 0], state, P_soft) + (k[..., :, None] * v[..., None, :]).to(state.dtype)
        o = (h * qc[:, 0, ..., None]).sum(-2).real
        return o, h
