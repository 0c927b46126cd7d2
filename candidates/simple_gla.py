"""Simple GLA: a diagonal transition whose decay is one scalar per head (``A_t = a_t I``), the form
of RetNet, Mamba-2 and fla's ``simple_gla``; the harness twin of ``fla:simple-gla``.

It runs ``kernels.diag_scan`` on the group's shared projections, with the per-head decay
broadcast over the state dimension. Everything but the decay is ``diagonal``'s: same ``q, k, v``
and ``out`` projections, same GLA gate parameterisation (``a_t = sigmoid(w_a . x_t + b_a) ** (1 /
gate_temperature)``, computed in log space), so the two differ only in the shape of the decay.
"""

from __future__ import annotations

from torch import Tensor, nn

from harness import register_candidate
from harness.kernels.diag_scan import diag_scan

from .diagonal import DiagonalMixer


@register_candidate(
    "simple-gla",
    groups=("fla",),
    reference="GLA with a scalar decay per head (RetNet, Sun et al. 2023; Mamba-2, Dao & Gu 2024; fla's simple_gla)",
)
class SimpleGLAMixer(DiagonalMixer):
    """``diagonal`` with ``a_t`` one number per head: ``a_proj`` maps ``D -> H`` instead of ``D -> H N``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        gate_temperature: float = 1.0,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size, gate_temperature, allow_negative=False)
        bias = self.a_proj.bias.data[:n_heads].clone()
        self.a_proj = nn.Linear(d_model, n_heads, bias=True)
        self.a_proj.bias.data.copy_(bias)

    def log_decay(self, x: Tensor) -> Tensor:
        """``log a [..., H]``."""
        return nn.functional.logsigmoid(self.a_proj(x)) / self.gate_temperature

    def decay(self, x: Tensor) -> tuple[Tensor, bool]:
        log_a = self.log_decay(x)
        return log_a[..., None].expand(*log_a.shape, self.d_state), True

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        a, _ = self.decay(x)
        o, _ = diag_scan(q, k, v, a, impl="chunk", chunk_size=self.chunk_size, log_decay=True)
        return o
