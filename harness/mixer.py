"""The candidate contract: a causal token mixer ``[B, T, D] -> [B, T, D]`` with two forms.

``forward`` is the parallel form used for training (chunkwise, scan or matmul; no Python loop over
time steps). ``init_state``/``step`` are the recurrent form used for decoding, for conformance
(parallel == recurrent) and for measuring state size. ``forward_recurrent`` loops ``step`` over
time: it is the reference, deliberately plain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

State = Any  # a tensor or any pytree (tuple / list / dict) of tensors


class Mixer(nn.Module):
    """Base class of every candidate. Subclasses implement ``forward``, ``init_state`` and ``step``.

    Class attributes a candidate may set:
      - ``needs_cuda``: True if it cannot run on CPU (conformance then skips it on CPU);
      - ``supported_dtypes``: dtypes its parallel form runs in (fp32 and fp64 are required);
      - ``complex_state``: True if the state holds complex tensors (byte counting is exact anyway).
    """

    needs_cuda: ClassVar[bool] = False
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32,
        torch.float64,
        torch.bfloat16,
        torch.float16,
    )

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.register_forward_pre_hook(_check_forward_input)

    # -- the two forms -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward (parallel form)")

    def init_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        raise NotImplementedError(f"{type(self).__name__} must implement init_state")

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} must implement step (recurrent form)")

    def forward_recurrent(self, x: Tensor) -> Tensor:
        """Reference: run ``step`` over every time step. Slow by design."""
        check_input(x, self.d_model)
        state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        outs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outs.append(y)
        return torch.stack(outs, dim=1)

    # -- hooks the engine and modifiers use --------------------------------------------------------
    def readout(self, o: Tensor, x: Tensor) -> Tensor:
        """The last map of both forms: the mixing's readout ``o [..., d_inner]`` to the output, given
        the mixer input ``x [..., d_model]`` (the same leading dimensions).

        ``forward`` and ``step`` end with it, so a modifier changes both forms at once without
        subclassing: the readout gate (``<name>+gate``) sets ``output_gate``, applied here before
        ``out``, as fla's layers apply their output gate. Default: ``output_gate`` if set, then the
        candidate's ``out`` projection if it has one.
        """
        gate = self._modules.get("output_gate")
        if gate is not None:
            o = gate(o, x)
        out = self._modules.get("out")
        return o if out is None else out(o)

    def set_training_progress(self, frac: float) -> None:
        """Called by the trainer before every step with the fraction of the step budget done (in
        [0, 1]); candidates that anneal (the tropical semiring's temperature) override it."""

    def implementations(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Named implementations of the same map, for numerics and throughput benchmarks.

        Subclasses with extra fast paths (e.g. a Triton kernel) add entries.
        """
        return {"parallel": self.forward, "recurrent": self.forward_recurrent}


def _check_forward_input(module: Mixer, args: tuple) -> None:
    if args and isinstance(args[0], Tensor):
        check_input(args[0], module.d_model)


def check_input(x: Tensor, d_model: int) -> None:
    """Clear errors for wrong shapes: which dimension, what was expected."""
    if x.dim() != 3:
        raise ValueError(f"mixer input must be [batch, time, d_model], got shape {tuple(x.shape)}")
    if x.shape[-1] != d_model:
        raise ValueError(f"mixer input last dimension must be d_model={d_model}, got {x.shape[-1]}")


def state_bytes(state: State) -> tuple[int, int]:
    """(elements, bytes) of a state pytree; complex elements count as one element of their size."""
    elems = 0
    nbytes = 0
    for leaf in tree_leaves(state):
        if isinstance(leaf, Tensor):
            elems += leaf.numel()
            nbytes += leaf.numel() * leaf.element_size()
    return elems, nbytes


@torch.no_grad()
def measure_state(mixer: Mixer, seq_len: int, dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Measured state size per sequence after ``seq_len`` steps (it grows with T for a KV cache)."""
    was_training = mixer.training
    mixer.eval()
    try:
        device = next((p.device for p in mixer.parameters()), torch.device("cpu"))
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(1, seq_len, mixer.d_model, generator=gen).to(device=device, dtype=dtype)
        state = mixer.init_state(1, device=device, dtype=dtype)
        initial_elems, initial_bytes = state_bytes(state)
        for t in range(seq_len):
            _, state = mixer.step(x[:, t], state)
        elems, nbytes = state_bytes(state)
    finally:
        mixer.train(was_training)
    return {
        "state_elements": elems,
        "state_bytes": nbytes,
        "state_bytes_initial": initial_bytes,
        "state_elements_initial": initial_elems,
        "seq_len": seq_len,
    }


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
