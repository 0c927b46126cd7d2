"""``harness bench numerics --against fla``: each of the harness's kernels against fla's op for the
same map, at the same inputs.

| pair              | harness kernel                                  | fla op                                   |
|-------------------|-------------------------------------------------|------------------------------------------|
| gla               | ``diag_scan`` (log decay per key dim)           | ``chunk_gla`` / ``naive_recurrent_gla``  |
| simple-gla        | ``diag_scan`` (one decay per head, broadcast)   | ``chunk_simple_gla`` / naive recurrent   |
| deltanet          | ``delta_rule``                                  | ``chunk_delta_rule`` / naive recurrent   |
| gated-deltanet    | ``delta_rule`` with a decay                     | ``chunk_gated_delta_rule`` / naive       |
| deltaproduct-2    | ``delta_product``, 2 steps, beta in (0, 2)      | ``chunk_gated_delta_product``, no gate   |
| gated-deltaproduct-2 | ``delta_product`` with a decay               | ``chunk_gated_delta_product``            |

Inputs are drawn in float32 and widened to float64, so a reference that computes in float32
(fla's CPU references do) sees exactly the same numbers. Each harness implementation (``chunk``,
``recurrent``) runs in float64; fla runs its pure-torch reference on CPU (float32 arithmetic) and
its Triton kernel on CUDA (in ``--dtypes``, float32 by default). Keys are L2-normalised and there is
no query scale (``scale=1``), as the harness's candidates use them. Reported: output and final-state
error of fla against the harness, as the RMS ratio ``||fla - ours|| / ||ours||`` and the max abs
difference; a row passes when the RMS ratio is within ``tolerance`` (``1e-5`` for float32 arithmetic:
float32 rounding is ~1e-7 per operation and grows slowly with T; ``2e-2`` for bfloat16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.kernels.delta_rule import delta_product, delta_rule
from harness.kernels.diag_scan import diag_scan

PAIRS = ("gla", "simple-gla", "deltanet", "gated-deltanet", "deltaproduct-2", "gated-deltaproduct-2")
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}


@dataclass
class AgainstConfig:
    device: str = "cpu"
    seq_lens: Sequence[int] = (64, 256)
    batch: int = 2
    heads: int = 2
    d_state: int = 16
    d_head: int = 32
    dtypes: Sequence[str] = ("float32",)  # fla's dtype on CUDA (its CPU references compute in float32)
    pairs: Sequence[str] = PAIRS
    seed: int = 0


def _inputs(pair: str, B: int, T: int, H: int, N: int, P: int, seed: int) -> dict[str, Tensor]:
    """float32 draws widened to float64: exactly representable in float32."""
    g = torch.Generator().manual_seed(seed)
    n = 2 if "deltaproduct" in pair else 1

    def r(*shape):
        return torch.randn(*shape, generator=g)

    q = F.normalize(r(B, T, H, N), dim=-1)
    out: dict[str, Any] = {"q": q, "n": n}
    if pair in ("gla", "simple-gla"):
        out["k"] = r(B, T, H, N) / math.sqrt(N)
        out["v"] = r(B, T, H, P)
        shape = (B, T, H, N) if pair == "gla" else (B, T, H)
        out["log_a"] = F.logsigmoid(r(*shape) + 3.0)  # decays near 0.95, as trained gates start
    else:
        out["k"] = F.normalize(r(B, T, n, H, N), dim=-1)
        out["v"] = r(B, T, n, H, P)
        high = 2.0 if "deltaproduct" in pair else 1.0
        out["beta"] = high * torch.sigmoid(r(B, T, n, H))
        out["decay"] = torch.exp(F.logsigmoid(r(B, T, H) + 4.0)) if pair.startswith("gated") else None
    return {k: (v.double() if isinstance(v, Tensor) else v) for k, v in out.items()}


def ours(pair: str, x: dict[str, Any], impl: str) -> tuple[Tensor, Tensor]:
    """The harness kernel of ``pair`` on the float64 inputs."""
    q, k, v = x["q"], x["k"], x["v"]
    if pair == "gla":
        return diag_scan(q, k, v, x["log_a"], impl=impl, chunk_size=64, log_decay=True)
    if pair == "simple-gla":
        log_a = x["log_a"][..., None].expand_as(q)
        return diag_scan(q, k, v, log_a, impl=impl, chunk_size=64, log_decay=True)
    if x["n"] == 1:
        return delta_rule(q, k[:, :, 0], v[:, :, 0], x["beta"][:, :, 0], x["decay"], impl=impl, chunk_size=64)
    return delta_product(q, k, v, x["beta"], x["decay"], impl=impl, chunk_size=16)


def theirs(pair: str, x: dict[str, Any], device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """fla's op of ``pair``: its Triton kernel on CUDA, its pure-torch reference on CPU."""
    from harness.candidates.fla_backend import fla_delta, fla_op

    kernels = device.startswith("cuda")
    to = (lambda t: t.to(device=device, dtype=dtype)) if kernels else (lambda t: t)
    q, k, v = to(x["q"]), to(x["k"]), to(x["v"])
    if pair in ("gla", "simple-gla"):
        g = x["log_a"].to(device=device, dtype=torch.float32) if kernels else x["log_a"]
        kw = {"initial_state": None, "output_final_state": True}
        if pair == "gla" and kernels:
            return fla_op("gla", "chunk_gla")(q, k, v, g, scale=1.0, **kw)
        if pair == "gla":  # the reference scales q by N ** -0.5 itself
            return fla_op("gla.naive", "naive_recurrent_gla")(q * math.sqrt(q.shape[-1]), k, v, g, **kw)
        if kernels:
            return fla_op("simple_gla", "chunk_simple_gla")(q, k, v, g=g, scale=1.0, **kw)
        return fla_op("simple_gla.naive", "naive_recurrent_simple_gla")(q, k, v, g, scale=1.0, **kw)
    decay = x["decay"]
    if decay is not None and kernels:
        decay = decay.to(device=device, dtype=torch.float32)
    return fla_delta(q, k, v, to(x["beta"]), decay, None, use_kernels=kernels)


def _errors(a: Tensor, ref: Tensor) -> tuple[float, float]:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    rms = float((a - ref).norm() / ref.norm().clamp_min(1e-300))
    return rms, float((a - ref).abs().max())


def run_against_fla(
    cfg: AgainstConfig, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """One row per (pair, T, harness implementation, fla dtype)."""
    rows = []
    on_cuda = cfg.device.startswith("cuda")
    dtypes = list(cfg.dtypes) if on_cuda else ["float32"]
    for pair in cfg.pairs:
        for T in cfg.seq_lens:
            x = _inputs(pair, cfg.batch, T, cfg.heads, cfg.d_state, cfg.d_head, cfg.seed)
            for dname in dtypes:
                row_base = {"pair": pair, "T": T, "fla": "kernel" if on_cuda else "reference", "dtype": dname}
                try:
                    o_f, s_f = theirs(pair, x, cfg.device, getattr(torch, dname))
                except Exception as e:  # an op fla lacks here, or a kernel that fails: a row that says so
                    rows.append(
                        {**row_base, "impl": "-", "status": "error", "error": f"{type(e).__name__}: {e}"}
                    )
                    continue
                for impl in ("chunk", "recurrent"):
                    o, s = ours(pair, x, impl)
                    out_rms, out_max = _errors(o_f, o)
                    st_rms, st_max = _errors(s_f, s)
                    tol = TOLERANCE.get(dname, 1e-5)
                    ok = max(out_rms, st_rms) <= tol
                    rows.append(
                        {
                            **row_base,
                            "impl": impl,
                            "out_rms": out_rms,
                            "out_max": out_max,
                            "state_rms": st_rms,
                            "state_max": st_max,
                            "tolerance": tol,
                            "status": "ok" if ok else "disagree",
                        }
                    )
                if progress is not None:
                    progress(f"{pair} T={T} {dname}")
    return rows


def table(rows: Sequence[dict[str, Any]]):
    import pandas as pd

    cols = ["pair", "T", "impl", "fla", "dtype", "out_rms", "out_max", "state_rms", "state_max", "status"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    for c in ("out_rms", "out_max", "state_rms", "state_max"):
        df[c] = df[c].map(
            lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1e}"
        )
    return df
