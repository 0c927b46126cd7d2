"""Fused post-sigmoid output gate (seed 060; the gate itself is seed 009 / Qiu et al. 2025, position G1).

    gated = o * sigmoid(x @ W^T + b)        x [..., K], W [N, K], b [N] or None, o [..., N]

``x`` is the mixer's input (the token's hidden state), ``o`` the mixer's readout before its output
projection. The gate projection is a matmul, and the sigmoid and the product with ``o`` are its
*epilogue*: the fused kernel never writes the gate logits or the gate to memory, it reads the ``o``
tile once and writes the gated tile once. This is an op applied token by token, not a recurrence, so
it has no state: the leading dimensions are free (``[B, T, H*P]`` from ``forward``, ``[B, 1, H*P]``
from ``step``) and it returns the gated tensor alone.

Implementations (``impl=``):
  - ``"reference"``: three torch ops (linear, sigmoid, multiply); autograd by torch.
  - ``"triton"``: the fused Triton kernel below for the forward; the backward is a
    ``torch.autograd.Function`` whose backward recomputes the logits with one torch matmul
    (activation recomputation: nothing but the inputs is saved) and uses torch ops for the rest.

Conventions for Triton kernels in ``kernels/`` (this file is the first; the others follow it):
  1. Import guard: ``triton`` is imported in a ``try`` and ``HAS_TRITON`` records the outcome; every
     ``@triton.jit`` function is defined under ``if HAS_TRITON``, so the package imports without triton.
  2. Beside every Triton op sits its plain torch reference in the same file, and the public function
     takes ``impl="reference" | "triton"``. Asking for ``"triton"`` without triton, or on CPU tensors
     without ``TRITON_INTERPRET=1``, raises ``RuntimeError`` saying so; bad shapes raise ``ValueError``
     naming the shape and what is allowed.
  3. Kernels take raw pointers plus explicit strides for every dimension (no hidden ``.contiguous()``
     assumptions inside the kernel); edges are handled with masks, so every shape works, not only
     multiples of the block. Block sizes are ``tl.constexpr`` powers of two, at least 16 on any
     dimension fed to ``tl.dot``.
  4. Accumulate in fp32 and store in the output's dtype; fp32 inputs use ``input_precision="ieee"``
     so the kernel matches the fp32 reference (no silent TF32).
  5. Backward: a ``torch.autograd.Function`` (Triton forward, torch or Triton backward; the docstring
     says which).
  6. Tests (tests/test_kernels_triton.py) run the kernels under ``TRITON_INTERPRET=1`` on CPU —
     tests/conftest.py sets it before triton is imported — against the reference on small shapes,
     including ragged ones, in fp32 and fp16 (the interpreter computes through numpy, which has no
     bfloat16, so bf16 is checked only on a GPU), forward and backward. Timings are GPU-only.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # convention 1: the package must import without triton
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on linux, absent elsewhere
    triton = None
    tl = None
    HAS_TRITON = False

IMPLS = ("reference", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, o: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"gate weight must be [N, K], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(
            f"x must be [..., K={k}] to match weight {tuple(weight.shape)}, got {tuple(x.shape)}"
        )
    if o.shape[:-1] != x.shape[:-1] or o.shape[-1] != n:
        raise ValueError(
            f"o must be [..., N={n}] with the leading shape of x {tuple(x.shape[:-1])}, got {tuple(o.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"gate bias must be [N={n}], got shape {tuple(bias.shape)}")


def sigmoid_gate_reference(x: Tensor, weight: Tensor, bias: Tensor | None, o: Tensor) -> Tensor:
    """``o * sigmoid(x W^T + b)`` in plain torch: the reference every fast path is tested against."""
    return o * torch.sigmoid(F.linear(x, weight, bias))


def sigmoid_gate(
    x: Tensor, weight: Tensor, bias: Tensor | None, o: Tensor, impl: str = "reference"
) -> Tensor:
    """``o * sigmoid(x @ weight^T + bias)``; see the module docstring for the implementations."""
    _check(x, weight, bias, o)
    if impl == "reference":
        return sigmoid_gate_reference(x, weight, bias, o)
    if impl == "triton":
        _check_triton_usable(x, weight, o)
        return _SigmoidGateTriton.apply(x, weight, bias, o)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")


def triton_usable(*tensors: Tensor) -> bool:
    """True where ``impl="triton"`` can run on these tensors (CUDA, or CPU under the interpreter)."""
    if not HAS_TRITON:
        return False
    if any(t.dtype not in TRITON_DTYPES for t in tensors):
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    return on_cuda or (os.environ.get("TRITON_INTERPRET") == "1" and not any(t.is_cuda for t in tensors))


def _check_triton_usable(x: Tensor, weight: Tensor, o: Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' needs the triton package, which is not installed")
    for t in (x, weight, o):
        if t.dtype not in TRITON_DTYPES:
            raise RuntimeError(f"impl='triton' supports {TRITON_DTYPES}, got {t.dtype}; use impl='reference'")
    if not triton_usable(x, weight, o):
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before triton "
            f"is imported); got devices {x.device}, {weight.device}, {o.device}"
        )


def _block(n: int, cap: int) -> int:
    """Power-of-two block no larger than ``cap`` and at least 16 (``tl.dot``'s minimum)."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def _launch_forward(x2: Tensor, weight: Tensor, bias: Tensor | None, o2: Tensor) -> Tensor:
    m, k = x2.shape
    n = weight.shape[0]
    y = torch.empty((m, n), device=o2.device, dtype=o2.dtype)
    block_m, block_n, block_k = _block(m, 64), _block(n, 64), _block(k, 32)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _sigmoid_gate_fwd_kernel[grid](
        x2,
        weight,
        bias if bias is not None else weight,  # dummy pointer, never read when HAS_BIAS is False
        o2,
        y,
        m,
        n,
        k,
        x2.stride(0),
        x2.stride(1),
        weight.stride(0),
        weight.stride(1),
        o2.stride(0),
        o2.stride(1),
        y.stride(0),
        y.stride(1),
        HAS_BIAS=bias is not None,
        IEEE=x2.dtype == torch.float32,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return y


class _SigmoidGateTriton(torch.autograd.Function):
    """Triton forward; torch backward that recomputes the gate logits from the saved inputs."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, o: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = _launch_forward(x.reshape(-1, x.shape[-1]), weight, bias, o.reshape(-1, o.shape[-1]))
        ctx.save_for_backward(x, weight, bias, o)
        ctx.has_bias = bias is not None
        return y.reshape(*lead, weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, bias, o = ctx.saved_tensors
        x2, o2, dy2 = x.reshape(-1, x.shape[-1]), o.reshape(-1, o.shape[-1]), dy.reshape(-1, dy.shape[-1])
        g = torch.sigmoid(F.linear(x2, weight, bias).float())
        do = (dy2.float() * g).to(o.dtype).reshape(o.shape)
        dz = dy2.float() * o2.float() * g * (1.0 - g)
        dzc = dz.to(x.dtype)
        dx = (dzc @ weight).reshape(x.shape)
        dw = dzc.t() @ x2
        db = dz.sum(0).to(bias.dtype) if ctx.has_bias else None
        return dx, dw, db, do


if HAS_TRITON:

    @triton.jit
    def _sigmoid_gate_fwd_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        o_ptr,
        y_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_xk,
        stride_wn,
        stride_wk,
        stride_om,
        stride_on,
        stride_ym,
        stride_yn,
        HAS_BIAS: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """One [BLOCK_M, BLOCK_N] tile of ``o * sigmoid(x W^T + b)``; the gate never leaves registers."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, tl.cdiv(K, BLOCK_K)):
            kk = k0 * BLOCK_K + offs_k
            mask_k = kk < K
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                mask=mask_m[:, None] & mask_k[None, :],
                other=0.0,
            )
            wt = tl.load(  # W^T tile [BLOCK_K, BLOCK_N] read through strides, no transpose copy
                w_ptr + kk[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                mask=mask_k[:, None] & mask_n[None, :],
                other=0.0,
            )
            if IEEE:
                acc = tl.dot(x, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, wt, acc)
        # epilogue: bias, sigmoid, product with the readout tile, one store
        if HAS_BIAS:
            b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc = acc + b[None, :]
        gate = tl.sigmoid(acc)
        mask = mask_m[:, None] & mask_n[None, :]
        o = tl.load(o_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, mask=mask, other=0.0)
        y = o.to(tl.float32) * gate
        tl.store(
            y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
            y.to(y_ptr.dtype.element_ty),
            mask=mask,
        )
