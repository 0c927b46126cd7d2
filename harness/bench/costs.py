"""Theoretical cost per token of a candidate: its declared algebra plus its projections.

A candidate declares ``algebra_cost()`` (``candidates/_transition.py``: building ``A_t`` and the scan,
from the kernels' ``token_cost``); the ``nn.Linear`` projections around it are counted here from the
module (``2 in out`` FLOPs each), so a declaration never has to repeat them. The diagonal family
(``candidates/diagonal.py``) is costed here from ``kernels.diag_scan.token_cost``. Candidates that
declare nothing get no cost (and no ``x flops``). ``harness bench throughput`` shows the ratio to the
baseline's cost (``x flops``) beside the measured ratio (``x base``): where ``x base`` is far above
``x flops`` the code, not the idea, is what costs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness.kernels import diag_scan
from harness.kernels.cost import TokenCost, compute

# candidates whose module is outside the bench's files: class name -> algebra cost
_DIAGONAL_FAMILY: dict[str, Callable[[nn.Module], TokenCost]] = {
    "DiagonalMixer": lambda m: m.n_heads * diag_scan.token_cost(m.d_state, m.head_dim),
    "S4DMixer": lambda m: m.n_heads * diag_scan.token_cost(m.d_state, m.head_dim),
    "ComplexDiagonalMixer": lambda m: (
        m.n_heads * diag_scan.token_cost(m.d_state, m.head_dim, complex_state=True)
    ),
}


def linear_flops(module: nn.Module) -> float:
    """Forward FLOPs per token of every ``nn.Linear`` in ``module``."""
    return float(
        sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))
    )


def token_cost(module: nn.Module) -> TokenCost | None:
    """The candidate's theoretical cost of one token (all heads, projections included), or None."""
    declared = getattr(module, "algebra_cost", None)
    algebra = declared() if callable(declared) else None
    if algebra is None and type(module).__name__ in _DIAGONAL_FAMILY:
        algebra = _DIAGONAL_FAMILY[type(module).__name__](module)
    if algebra is None:
        return None
    return algebra + compute(linear_flops(module))
