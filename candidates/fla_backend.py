"""fla as a backend: candidates that run flash-linear-attention's production ops (the ``fla-core``
package, ``pip install 'mixer-harness[fla]'``) inside the projections of their harness twins.

Each adapter subclasses its twin and replaces only the mixing op, so the two have the same modules,
the same parameters and, for a seed, the same initial weights; a head-to-head run differs only in
the kernel:

| adapter                     | harness twin                      | fla op (CUDA)                           |
|-----------------------------|-----------------------------------|-----------------------------------------|
| ``fla:gla``                 | ``diagonal``                      | ``chunk_gla``                           |
| ``fla:simple-gla``          | ``simple-gla``                    | ``chunk_simple_gla``                    |
| ``fla:deltanet``            | ``deltanet``                      | ``chunk_delta_rule``                    |
| ``fla:gated-deltanet``      | ``gated-deltanet``                | ``chunk_gated_delta_rule``              |
| ``fla:deltaproduct-2``      | ``deltaproduct-2``                | ``chunk_gated_delta_product`` (no gate) |
| ``fla:gated-deltaproduct-2``| ``deltaproduct-2[gated=True]``    | ``chunk_gated_delta_product``           |

The harness's maps have no ``1/sqrt(d)`` query scale (``o_t = S_t^T q_t``), so every call passes
``scale=1``. ``chunk_gated_delta_product`` refuses float32 inputs: its inputs go in as bfloat16.

On CPU fla's Triton kernels do not run; the adapters then use fla's pure-torch references
(``naive_recurrent_gla``, ``naive_recurrent_simple_gla``, ``naive_recurrent_gated_delta_product``,
which covers DeltaNet, Gated DeltaNet and the products), which compute in float32 whatever the
input dtype, with a Python loop over time: for checking (conformance, ``harness bench numerics
--against fla``) and small runs, not for speed. The recurrent form (``step``) uses the same
reference on every device, one token at a time, with a float32 state, so the two forms agree.

The adapters are registered only when ``fla`` is installed (found without importing it: importing
fla takes seconds, and happens when an adapter is first built); without it ``harness list`` does
not show them. fla's version is a hyperparameter
(``fla_version``, defaulting to the installed one), so it is part of every run's identity: records
of another fla version are not reused.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from importlib import metadata
from typing import Any

import torch
from torch import Tensor

from harness import register_candidate

from .deltanet import DeltaNetMixer
from .diagonal import DiagonalMixer
from .simple_gla import SimpleGLAMixer

FLA_AVAILABLE = importlib.util.find_spec("fla") is not None


def _installed_version() -> str:
    for dist in ("fla-core", "flash-linear-attention"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


FLA_VERSION = _installed_version() if FLA_AVAILABLE else "not installed"


def _register(name: str, **kw: Any):
    """``register_candidate`` where fla is installed; without it the adapters are no candidates
    (the classes stay importable), so ``harness list`` and the checks see only what can run."""
    if FLA_AVAILABLE:
        return register_candidate(name, **kw)
    return lambda cls: cls


def fla_op(module: str, name: str):
    """``fla.ops.<module>.<name>``, imported on first use (fla's CPU-fallback warning silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Triton is not supported.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="fla")
        try:
            mod = importlib.import_module(f"fla.ops.{module}")
        except ImportError as e:
            raise ImportError(
                f"fla.ops.{module} could not be imported ({e}); install the fla extra: "
                "pip install 'mixer-harness[fla]'"
            ) from e
    return getattr(mod, name)


def _check_version(fla_version: str) -> None:
    if fla_version != FLA_VERSION:
        raise ValueError(f"fla_version={fla_version!r}, but fla {FLA_VERSION} is installed")


def _use_kernels(x: Tensor) -> bool:
    return x.is_cuda


# -- the delta-rule family ---------------------------------------------------------------------------
def fla_delta(q, k, v, beta, decay, state=None, use_kernels=False):
    """The delta rule / gated delta rule / (gated) DeltaProduct through fla.

    ``q [B, T, H, N]``, ``k [B, T, n, H, N]``, ``v [B, T, n, H, P]``, ``beta [B, T, n, H]``, ``decay
    [B, T, H]`` or None (the harness's layout: Householder steps after time); ``state [B, H, N, P]``.
    Returns ``(o [B, T, H, P], final state)``."""
    B, T, n, H, N = k.shape
    g = None if decay is None else torch.log(decay)
    kf, vf, bf = k.flatten(1, 2), v.flatten(1, 2), beta.flatten(1, 2)  # token t, step j -> t * n + j
    if use_kernels:
        kw: dict[str, Any] = {"scale": 1.0, "initial_state": state, "output_final_state": True}
        if n == 1 and g is None:
            return fla_op("delta_rule", "chunk_delta_rule")(q, kf, vf, bf, **kw)
        if n == 1:
            return fla_op("gated_delta_rule", "chunk_gated_delta_rule")(q, kf, vf, g, bf, **kw)
        op = fla_op("gated_delta_product", "chunk_gated_delta_product")
        dt = q.dtype
        low = (lambda t: t.to(torch.bfloat16)) if dt == torch.float32 else (lambda t: t)
        o, s = op(low(q), low(kf), low(vf), g, low(bf), num_householder=n, **kw)
        return o.to(dt), s
    naive = fla_op("gated_delta_product.naive", "naive_recurrent_gated_delta_product")
    state = None if state is None else state.float()  # the reference keeps a float32 state
    o, s = naive(
        q, kf, vf, None if g is None else g.float(), bf, scale=1.0,
        initial_state=state, output_final_state=True, num_householder=n,
    )  # fmt: skip
    return o, s


@_register(
    "fla:deltanet",
    groups=("fla",),
    reference="fla chunk_delta_rule in deltanet's projections (Yang et al. 2024)",
)
@_register(
    "fla:gated-deltanet",
    groups=("fla",),
    reference="fla chunk_gated_delta_rule in gated-deltanet's projections (Yang et al. 2025)",
    gated=True,
)
@_register(
    "fla:deltaproduct-2",
    groups=("fla",),
    reference="fla chunk_gated_delta_product (no gate) in deltaproduct-2's projections (Siems et al. 2025)",
    n_householder=2,
    allow_negative=True,
    chunk_size=16,
)
@_register(
    "fla:gated-deltaproduct-2",
    groups=("fla",),
    reference="fla chunk_gated_delta_product in the projections of deltaproduct-2[gated=True] (Siems et al. 2025)",
    n_householder=2,
    allow_negative=True,
    gated=True,
    chunk_size=16,
)
class FlaDeltaNet(DeltaNetMixer):
    """``DeltaNetMixer`` (deltanet.py) with fla's op in place of ``kernels.delta_rule``."""

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
        fla_version: str = FLA_VERSION,
    ) -> None:
        _check_version(fla_version)
        super().__init__(d_model, n_heads, d_state, chunk_size, allow_negative, gated, n_householder, solve)
        self.fla_version = fla_version

    def init_state(self, batch, device=None, dtype=None):
        return super().init_state(batch, device=device, dtype=torch.float32)

    def run(self, q, k, v, beta, decay, state=None, impl: str = "chunk"):
        o, s = fla_delta(q, k, v, beta, decay, state, use_kernels=impl == "chunk" and _use_kernels(q))
        return o.to(q.dtype), s


# -- diagonal decays ---------------------------------------------------------------------------------
@_register(
    "fla:gla", groups=("fla",), reference="fla chunk_gla in diagonal's projections (GLA, Yang et al. 2023)"
)
class FlaGLA(DiagonalMixer):
    """``diagonal`` (GLA gate, per-dimension decay) with fla's GLA op in place of ``kernels.diag_scan``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        gate_temperature: float = 1.0,
        fla_version: str = FLA_VERSION,
    ) -> None:
        _check_version(fla_version)
        super().__init__(d_model, n_heads, d_state, chunk_size, gate_temperature, allow_negative=False)
        self.fla_version = fla_version

    def init_state(self, batch, device=None, dtype=None):
        return super().init_state(batch, device=device, dtype=torch.float32)

    def _gla(self, q, k, v, log_a, state, kernels: bool):
        if kernels:
            return fla_op("gla", "chunk_gla")(
                q, k, v, log_a, scale=1.0, initial_state=state, output_final_state=True
            )
        # the reference has no scale argument: it multiplies q by N ** -0.5, which q carries here
        naive = fla_op("gla.naive", "naive_recurrent_gla")
        return naive(q * math.sqrt(self.d_state), k, v, log_a, initial_state=state, output_final_state=True)

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        log_a, _ = self.decay(x)
        return self._gla(q, k, v, log_a, None, _use_kernels(q))[0].to(q.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        log_a, _ = self.decay(x_t)
        o, state = self._gla(q[:, None], k[:, None], v[:, None], log_a[:, None], state.float(), False)
        return o[:, 0].to(q.dtype), state


@_register(
    "fla:simple-gla",
    groups=("fla",),
    reference="fla chunk_simple_gla in simple-gla's projections (scalar decay per head)",
)
class FlaSimpleGLA(SimpleGLAMixer):
    """``simple-gla`` with fla's simple-GLA op in place of ``kernels.diag_scan``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        gate_temperature: float = 1.0,
        fla_version: str = FLA_VERSION,
    ) -> None:
        _check_version(fla_version)
        super().__init__(d_model, n_heads, d_state, chunk_size, gate_temperature)
        self.fla_version = fla_version

    def init_state(self, batch, device=None, dtype=None):
        return super().init_state(batch, device=device, dtype=torch.float32)

    def _sgla(self, q, k, v, g, state, kernels: bool):
        kw = {"scale": 1.0, "initial_state": state, "output_final_state": True}
        if kernels:
            return fla_op("simple_gla", "chunk_simple_gla")(q, k, v, g=g, **kw)
        return fla_op("simple_gla.naive", "naive_recurrent_simple_gla")(q, k, v, g, **kw)

    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self._sgla(q, k, v, self.log_decay(x), None, _use_kernels(q))[0].to(q.dtype)

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        g = self.log_decay(x_t)
        o, state = self._sgla(q[:, None], k[:, None], v[:, None], g[:, None], state.float(), False)
        return o[:, 0].to(q.dtype), state
