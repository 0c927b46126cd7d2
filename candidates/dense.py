"""Unstructured input-dependent transitions (the expressivity ceiling of the group), and the shared
base of every candidate whose parallel form materialises dense ``A_t`` for ``kernels.dense_scan``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels import dense_scan as dense_scan_ops
from harness.kernels.cost import TokenCost, compute
from harness.kernels.dense_scan import dense_scan

from ._transition import TransitionMixer

HALF = (torch.float16, torch.bfloat16)


def work_dtype(x: Tensor) -> torch.dtype:
    """Transitions are built in float32 for half-precision inputs (products, norms and solves over
    N x N matrices are not safe in bf16 / fp16), in the input's dtype otherwise."""
    return torch.float32 if x.dtype in HALF else x.dtype


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` computed in ``x``'s dtype whatever the layer's (for the float32 work path)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


class MaterialisedTransition(TransitionMixer):
    """Parallel form: build every ``A_t`` densely (head-major ``[B, H, T, N, N]``) and run the chunked
    two-sweep dense scan. Recurrent form: ``apply_step`` (default: the same dense ``A_t``; structured
    subclasses override it with their O(structure) product, so the two forms share no code path
    beyond the parameters)."""

    def transitions(self, x: Tensor) -> Tensor:
        """``x [B, T, D] -> A [B, H, T, N, N]`` (head-major, contiguous)."""
        raise NotImplementedError

    def construction_flops(self) -> float | None:
        """FLOPs to build one ``A_t`` (one head) beyond the projections; None: not declared."""
        return None

    def algebra_cost(self) -> TokenCost | None:
        build = self.construction_flops()
        if build is None:
            return None
        return self.n_heads * (compute(build) + dense_scan_ops.token_cost(self.d_state, self.head_dim))

    def apply_step(self, x_t: Tensor, h: Tensor) -> Tensor:
        """``A_t h`` for one step: ``x_t [B, D]``, ``h [B, H, N, P]``."""
        return self.transitions(x_t[:, None])[:, :, 0] @ h.to(work_dtype(x_t))

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        A = self.transitions(x)
        o, _ = dense_scan(q, k, v, A.transpose(1, 2), impl="chunk", chunk_size=self.chunk_size)
        return o.to(v.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        h = self.apply_step(x_t, state)
        h = h + (k[..., :, None] * v[..., None, :]).to(h.dtype)
        o = (h * q[..., None].to(h.dtype)).sum(-2)
        return o.to(v.dtype), h.to(state.dtype)


@register_candidate(
    "dense",
    groups=("transitions",),
    reference=(
        "SD-SSM (Terzic et al. 2024, On the expressiveness and length generalization of selective "
        "state-space models on regular languages): softmax-selected dictionary of dense transitions, "
        "column-normalised; IDS4-style unstructured input-dependent A_t"
    ),
)
class DenseMixer(MaterialisedTransition):
    """``A_t = sum_k softmax(W_s x_t)_k A_k`` per head: a convex combination of a learned dictionary
    of ``dict_size`` dense N x N matrices (SD-SSM's selection), each dictionary matrix column-
    normalised to unit l1 norm.

    Stability (SD-SSM's operator normalisation with p = 1, applied to the dictionary): every column of
    every ``A_k`` has l1 norm 1, so by convexity every column of ``A_t`` has l1 norm <= 1 and
    ``||A_t||_1 <= 1``: the map is non-expansive in l1 and the state grows at most linearly in T. SD-SSM
    normalises the combination instead (norm exactly 1); normalising the dictionary gives the same
    bound for O(K N^2) per head instead of two extra passes over every ``A_t``, and lets the mixture
    contract (no decay gate is added, as in SD-SSM). The dictionary is the unstructured ceiling of the
    group: any N x N matrix per step, ``N^3`` per combine in the scan. Parallel form: the chunked
    two-sweep dense scan of ``kernels.dense_scan``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        dict_size: int = 8,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        self.dict_size, self.eps = dict_size, eps
        self.select = nn.Linear(d_model, n_heads * dict_size, bias=False)
        N = d_state
        self.A_dict = nn.Parameter(torch.randn(n_heads, dict_size, N, N) / math.sqrt(N))

    def construction_flops(self) -> float:
        return 2 * self.dict_size * self.d_state**2  # sum_k s_k A_k

    def dictionary(self, dtype: torch.dtype) -> Tensor:
        """``[H, K, N*N]``: the dictionary with unit-l1 columns."""
        A = self.A_dict.to(dtype)
        return (A / (A.abs().sum(-2, keepdim=True) + self.eps)).flatten(-2)

    def transitions(self, x: Tensor) -> Tensor:
        xw = x.to(work_dtype(x))
        H, K, N = self.n_heads, self.dict_size, self.d_state
        s = torch.softmax(linear(xw, self.select).unflatten(-1, (H, K)), dim=-1)  # [B, T, H, K]
        return (s.transpose(1, 2) @ self.dictionary(xw.dtype)).unflatten(-1, (N, N))  # [B, H, T, N, N]
