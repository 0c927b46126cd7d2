"""Group-and-Shuffle monomial transitions (seed proposal 016)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels import perm_diag_scan as pd_ops
from harness.kernels.cost import TokenCost, compute
from harness.kernels.monomial import block_diag_apply, gs_monomial, permute_rows, stride_permutation
from harness.kernels.perm_diag_scan import pd_step, perm_diag_scan

from ._transition import TransitionMixer
from .dense import linear

MAX_ENUM_BLOCK = 6  # b! permutations are enumerated for the exact hard assignment


class _Sinkhorn(torch.autograd.Function):
    """Sinkhorn normalisation with a hand-written backward: a half-step ``y = z / sum_d z`` has the
    vector-Jacobian product ``g -> (g - sum_d(g y)) / sum_d z`` (4 passes instead of autograd's ~7)."""

    @staticmethod
    def forward(ctx, logits: Tensor, n_iter: int, row_dim: int, col_dim: int):
        z0 = torch.exp(logits - logits.amax(dim=(row_dim, col_dim), keepdim=True))  # the shift cancels
        z, saved = z0, []
        for _ in range(n_iter):
            for dim in (col_dim, row_dim):  # rows sum to 1, then columns sum to 1
                S = z.sum(dim, keepdim=True)
                z = z / S
                saved += [z, S]
        ctx.save_for_backward(z0, *saved)
        ctx.dims = (col_dim, row_dim)
        return z

    @staticmethod
    def backward(ctx, g: Tensor):
        z0, *saved = ctx.saved_tensors
        for i in reversed(range(len(saved) // 2)):
            y, S = saved[2 * i], saved[2 * i + 1]
            dim = ctx.dims[i % 2]
            g = (g - (g * y).sum(dim, keepdim=True)) / S
        return g * z0, None, None, None


def sinkhorn(logits: Tensor, n_iter: int, row_dim: int = -2, col_dim: int = -1) -> Tensor:
    """Doubly-stochastic relaxation of ``b x b`` logits (rows along ``row_dim``, columns along
    ``col_dim``): alternate row / column normalisation of ``exp(logits - max)`` (the log-space
    iteration's result, with 2 passes per half-step instead of 5)."""
    return _Sinkhorn.apply(logits, n_iter, row_dim, col_dim)


def sinkhorn_reference(logits: Tensor, n_iter: int, row_dim: int = -2, col_dim: int = -1) -> Tensor:
    """Log-space Sinkhorn through autograd: the reference of ``sinkhorn`` (tests)."""
    z = logits
    for _ in range(n_iter):
        z = z - torch.logsumexp(z, dim=col_dim, keepdim=True)
        z = z - torch.logsumexp(z, dim=row_dim, keepdim=True)
    return z.exp()


@register_candidate(
    "gs-monomial",
    groups=("transitions",),
    reference="Group-and-Shuffle matrices (Gorbunov et al. 2024) as transitions: A_t = L_t P_shuffle R_t with block-monomial L_t, R_t, closed under products",
)
class GSMonomialMixer(TransitionMixer):
    """``A_t = L_t P R_t``: ``L_t, R_t`` block-diagonal with monomial ``b x b`` blocks ``pi D``, ``P`` the
    stride shuffle that sends one element of every block to every block.

    As in the proposal: per block, ``D = alpha * tanh(W_D x_t)`` with ``alpha = sigmoid(W_a x_t)``, so
    ``|D| < 1`` (sign flips allowed: signed permutations) and ``||A_t||_2 <= max|D_L| max|D_R| < 1``;
    ``pi = Hungarian(Sinkhorn(W_pi x_t / tau))`` hard in the forward pass with the Sinkhorn soft
    permutation's gradient in the backward pass (straight-through). The hard assignment is exact: all
    ``b!`` permutations are scored (``b <= 6``), which is what the Hungarian algorithm returns; it is
    taken on the logits, which is the same as on the log-domain Sinkhorn matrix (row and column
    scalings add one constant to every permutation's score). Choices the proposal leaves open:
    ``tau = 1``, 3 Sinkhorn iterations (the matrix only shapes the straight-through gradient; each
    iteration is ~8 passes over ``2 H r b^2`` numbers per token, the largest cost of the candidate).

    Closure (the point of the proposal): a block-monomial matrix is monomial in N x N, so ``L P R``
    is one monomial ``(perm, diag)`` and products stay monomial, composed in O(N) by index gathers.
    The parallel form is therefore the PD-SSM index scan (``kernels.perm_diag_scan``) on the composed
    ``(idx, D)``; the straight-through gradient reaches the Sinkhorn matrices through the dense
    surrogate ``blockdiag(S_L) P blockdiag(S_R)`` (built only when gradients are needed). The state is
    real. The hard assignment makes half precision unsafe (rounding flips selected permutations):
    fp32 / fp64 only.
    """

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        block_size: int = 4,
        tau: float = 1.0,
        sinkhorn_iters: int = 3,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        if d_state % block_size or not 1 <= block_size <= MAX_ENUM_BLOCK:
            raise ValueError(
                f"block_size={block_size} must divide d_state={d_state} and be in [1, {MAX_ENUM_BLOCK}]"
            )
        H, b = n_heads, block_size
        r = d_state // b
        self.block_size, self.n_blocks, self.tau, self.sinkhorn_iters = b, r, tau, sinkhorn_iters
        self.perm_proj = nn.Linear(d_model, 2 * H * r * b * b)  # logits for L and R blocks
        self.diag_proj = nn.Linear(d_model, 2 * H * d_state)
        self.gate_proj = nn.Linear(d_model, 2 * H * d_state)
        nn.init.constant_(self.gate_proj.bias, 3.0)  # alpha ~ 0.95
        with torch.no_grad():  # start with tanh(.) ~ +-0.76 and mixed signs
            self.diag_proj.bias.copy_(torch.where(torch.rand(2 * H * d_state) < 0.8, 1.0, -1.0))
            self.diag_proj.weight.mul_(0.5)
        self.register_buffer("shuffle", stride_permutation(r, b), persistent=False)
        perms = torch.tensor(list(itertools.permutations(range(b))))  # [b!, b]: column c -> row perms[c]
        self.register_buffer("perms", perms, persistent=False)
        select = torch.zeros(b * b, len(perms))  # select[row * b + col, p] = 1 iff perms[p][col] == row
        select[perms * b + torch.arange(b), torch.arange(len(perms))[:, None]] = 1.0
        self.register_buffer("select", select, persistent=False)

    def factors(self, x: Tensor):
        """Hard block permutations and diagonals ``[.., 2, H, r, b]`` (``2`` = L, R) and the Sinkhorn
        matrices in batch-last layout ``[2, H, r, b(row), b(col), prod(..)]`` (None without grad).

        The logits are produced batch-last (``W x^T``) so that Sinkhorn's row / column sums over the
        tiny ``b x b`` blocks are sums of whole contiguous slices, not reductions over 4 elements."""
        H, r, b = self.n_heads, self.n_blocks, self.block_size
        lead = x.shape[:-1]
        xf = x.reshape(-1, x.shape[-1])
        w, bias = self.perm_proj.weight.to(x.dtype), self.perm_proj.bias.to(x.dtype)
        logits = torch.addmm(bias[:, None], w, xf.T).view(2, H, r, b, b, -1) / self.tau  # [.., row, col, BT]
        with torch.no_grad():  # [2, H, r, BT, b!]: sum_c logits[perm[c], c]; the argmax has no gradient
            scores = logits.flatten(3, 4).mT @ self.select.to(x.dtype)
        perm = self.perms[scores.argmax(-1)].permute(3, 0, 1, 2, 4).reshape(*lead, 2, H, r, b)
        soft = (
            sinkhorn(logits, self.sinkhorn_iters, row_dim=-3, col_dim=-2) if torch.is_grad_enabled() else None
        )
        alpha = torch.sigmoid(linear(x, self.gate_proj))
        diag = (alpha * torch.tanh(linear(x, self.diag_proj))).unflatten(-1, (2, H, r, b))
        return perm, diag, soft

    def transition(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(idx, D) [.., H, N]`` of the monomial ``L P R`` and the dense soft surrogate (or None)."""
        perm, diag, soft = self.factors(x)
        idx, D = gs_monomial(
            perm[..., 0, :, :, :],
            diag[..., 0, :, :, :],
            self.shuffle,
            perm[..., 1, :, :, :],
            diag[..., 1, :, :, :],
        )
        P_soft = None if soft is None else self.soft_surrogate(soft[0], soft[1], x.shape[:-1])
        return idx, D, P_soft

    def soft_surrogate(self, S_L: Tensor, S_R: Tensor, lead: torch.Size) -> Tensor:
        """Dense ``blockdiag(S_L) P blockdiag(S_R)`` as a ``[*lead, H, N, N]`` view, for the straight-through
        gradient; ``S_L, S_R [H, r, b(row), b(col), BT]`` (batch-last).

        With ``r = b`` the shuffle sends offset ``c'`` of block ``beta`` to offset ``beta`` of block ``c'``,
        so ``out[(l, m), (beta, c)] = S_L[l][m, beta] * S_R[beta][l, c]``: one outer product, no matmul.
        """
        H, N = self.n_heads, self.d_state
        if self.n_blocks == self.block_size:
            out = (
                S_L[:, :, :, :, None, :] * S_R.transpose(1, 2)[:, :, None, :, :, :]
            )  # [H, l, m, beta, c, BT]
            out = out.reshape(H, N, N, -1)
        else:
            S_L, S_R = (S.permute(4, 0, 1, 2, 3) for S in (S_L, S_R))  # [BT, H, r, b, b]
            eye = torch.eye(N, dtype=S_R.dtype, device=S_R.device).expand(*S_R.shape[:-3], N, N)
            out = block_diag_apply(S_L, permute_rows(block_diag_apply(S_R, eye), self.shuffle))
            out = out.permute(1, 2, 3, 0)
        return out.permute(3, 0, 1, 2).reshape(*lead, H, N, N)

    def algebra_cost(self) -> TokenCost:
        """Scoring all ``b!`` block permutations (``2 b^2 b!`` per block, L and R), the O(N) composition;
        backward: Sinkhorn's ``~8`` passes per iteration over ``2 r b^2`` logits and the dense ``N^2``
        surrogate. The scan is a real PD scan with the STE's dense ``dL/dP``."""
        N, b, r = self.d_state, self.block_size, self.n_blocks
        perms = len(self.perms)
        build = compute(
            2 * r * (2 * b * b * perms) + 10 * N, 2 * r * b * b * 8 * self.sinkhorn_iters + 2 * N * N
        )
        return self.n_heads * (build + pd_ops.token_cost(N, self.head_dim, complex_state=False, ste=True))

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        idx, D, P_soft = self.transition(x)
        o, _ = perm_diag_scan(q, k, v, idx, D, impl="scan", chunk_size=self.chunk_size, P_ste=P_soft)
        return o

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        idx, D, P_soft = self.transition(x_t)
        h = pd_step(idx, D.to(state.dtype), state, P_soft) + k[..., :, None] * v[..., None, :]
        return (h * q[..., None]).sum(-2), h
