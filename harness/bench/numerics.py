"""Numerics of candidates: every implementation against a float64 reference, and long-sequence stability.

For each candidate, sequence length T and dtype (those in ``supported_dtypes``), the module is cast to
the dtype and each entry of ``implementations()`` (``parallel``, ``recurrent``, ``triton`` where
present) computes outputs and input gradients of ``sum(y * g)`` for a fixed random ``g``. The
reference is the recurrent form (``init_state`` / ``step``, a plain loop) in float64 run on the *same*
rounded weights and inputs (the low-precision module and input cast up exactly), so the numbers
measure the arithmetic error of the implementation, not the rounding of its inputs. Errors:

- output / gradient: RMS ratio ``||y - ref|| / ||ref||`` and max abs ``max |y - ref|``;
- final state: the recurrent form's state after T steps in the dtype vs float64 (RMS ratio). The
  Mixer contract exposes no final state from ``forward``, so this error is reported on the
  ``recurrent`` row only; other rows leave it empty.

Everything runs with ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
``torch.utils.deterministic.fill_uninitialized_memory = True``: every ``torch.empty`` returns NaNs, so
a kernel that leaves part of its output unwritten shows up as a non-finite error instead of passing
on stale memory. Non-finite errors are reported as ``nan`` with ``finite = False``.

Long-sequence stability (``stability_len``, default 16384, batch 1): the parallel form's output must
be finite, and the recurrent state's RMS is tracked at T/4, T/2 and T; ``state_growth`` is
``rms(T) / rms(T/4)``, and the state counts as bounded when it is finite and the growth is at most
``growth_limit`` (10 by default: linear attention's unnormalised sum grows about 4x over that span by
design, an exploding recurrence grows far more). The step loop stops at ``stability_time_cap`` seconds
and the row says how far it got. Records of kind ``numerics``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from harness.bench import common
from harness.bench.common import (
    RecordWriter,
    candidate_identity,
    device_identity,
    dtype_name,
    is_oom,
    parse_dtype,
    short_error,
)
from harness.environment import resolve_device
from harness.progress import bar as progress
from harness.registry import get_candidate
from harness.results import RecordStore

METHOD_VERSION = 1


@dataclass
class NumericsConfig:
    device: str = "cpu"
    dtypes: Sequence[str] = ("float32", "bfloat16", "float16")
    seq_lens: Sequence[int] = (64, 256, 1024)
    batch: int = 2
    d_model: int = 64
    impls: Sequence[str] | None = None  # None: every entry of implementations()
    stability_len: int = 16384  # 0 disables the stability check
    stability_dtypes: Sequence[str] = ("float32",)
    growth_limit: float = 10.0
    stability_time_cap: float = 60.0
    time_cap: float = 120.0  # seconds for one (candidate, T): longer T's are skipped once exceeded
    seed: int = 0
    nan_fill: bool = True
    threads: int | None = None  # None: 1 on CPU (many tiny ops: extra threads only add contention)
    force: bool = False
    progress: bool = True

    def resolved(self) -> NumericsConfig:
        dev = resolve_device(self.device)
        return NumericsConfig(
            **{
                **asdict(self),
                "device": str(dev),
                "dtypes": tuple(dtype_name(parse_dtype(d)) for d in self.dtypes),
                "stability_dtypes": tuple(dtype_name(parse_dtype(d)) for d in self.stability_dtypes),
                "seq_lens": tuple(sorted(set(self.seq_lens))),
                "threads": self.threads or (torch.get_num_threads() if dev.type == "cuda" else 1),
            }
        )


@contextlib.contextmanager
def nan_fill_uninitialized(enabled: bool = True) -> Iterator[None]:
    """Make ``torch.empty`` (and every uninitialised allocation) return NaNs inside the block."""
    if not enabled:
        yield
        return
    import torch.utils.deterministic as det

    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
            yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        det.fill_uninitialized_memory = prev_fill


# -- error measures --------------------------------------------------------------------------------


def flat(tree: Any) -> Tensor:
    """All tensor leaves of a pytree as one float64 vector (complex leaves as (re, im) pairs)."""
    parts = []
    for leaf in tree_leaves(tree):
        if isinstance(leaf, Tensor):
            t = leaf.detach()
            if t.is_complex():
                t = torch.view_as_real(t.to(torch.complex128))
            parts.append(t.to(torch.float64).reshape(-1).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def rms_ratio(y: Any, ref: Any) -> float:
    a, b = flat(y), flat(ref)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs reference {tuple(b.shape)}")
    denom = b.norm().item()
    num = (a - b).norm().item()
    if not math.isfinite(num):
        return float("nan")
    return num / denom if denom > 0 else num


def max_abs(y: Any, ref: Any) -> float:
    a, b = flat(y), flat(ref)
    if a.numel() == 0:
        return 0.0
    m = (a - b).abs().max().item()
    return m if math.isfinite(m) else float("nan")


def rms(tree: Any) -> float:
    v = flat(tree)
    return v.pow(2).mean().sqrt().item() if v.numel() else 0.0


# -- forms -----------------------------------------------------------------------------------------


def recurrent_with_state(model, x: Tensor) -> tuple[Tensor, Any]:
    """The recurrent form (as ``forward_recurrent``) returning the final state too."""
    state = model.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    outs = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        outs.append(y)
    return torch.stack(outs, dim=1), state


def output_and_grad(fn, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    xg = x.detach().requires_grad_(True)
    y = fn(xg)
    (gx,) = torch.autograd.grad(y, xg, grad_outputs=g)
    return y.detach(), gx


# -- the run ---------------------------------------------------------------------------------------


def run_numerics(
    names: Sequence[str], config: NumericsConfig | None = None, store: RecordStore | None = None
) -> list[dict[str, Any]]:
    """One row per (candidate, impl, dtype, T), plus one stability row per (candidate, dtype)."""
    cfg = (config or NumericsConfig()).resolved()
    device = torch.device(cfg.device)
    writer = RecordWriter(store, "numerics", device)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    n_stab = len(cfg.stability_dtypes) if cfg.stability_len else 0
    try:
        with progress(
            len(names) * (len(cfg.seq_lens) * len(cfg.dtypes) + n_stab), "numerics", cfg.progress
        ) as bar:
            for name in names:
                rows.extend(_Runner(name, cfg, device, writer, bar).run())
    finally:
        torch.set_num_threads(prev_threads)
    attach_stability(rows)
    return rows


def attach_stability(rows: list[dict[str, Any]]) -> None:
    """Copy each (candidate, dtype)'s stability verdict onto its error rows (column ``stable_long``)."""
    verdict = {(r["candidate"], r["dtype"]): r.get("stable") for r in rows if r.get("check") == "stability"}
    for r in rows:
        if r.get("check") == "error":
            r["stable_long"] = verdict.get((r["candidate"], r["dtype"]))


class _Runner:
    def __init__(self, name: str, cfg: NumericsConfig, device: torch.device, writer: RecordWriter, bar):
        self.name, self.cfg, self.device, self.writer, self.bar = name, cfg, device, writer, bar
        self.spec = get_candidate(name)
        self.cid = candidate_identity(name)

    def identity(self, check: str, impl: str, dtype: str, T: int, batch: int) -> dict[str, Any]:
        return {
            "bench": "numerics",
            "method_version": METHOD_VERSION,
            **self.cid,
            "check": check,
            "impl": impl,
            "dtype": dtype,
            "seq_len": T,
            "batch": batch,
            "d_model": self.cfg.d_model,
            "seed": self.cfg.seed,
            "nan_fill": self.cfg.nan_fill,
            **device_identity(self.device, self.cfg.threads),
        }

    def base_row(self, check: str, impl: str, dtype: str, T: int, batch: int) -> dict[str, Any]:
        return {
            "candidate": self.name,
            "check": check,
            "impl": impl,
            "dtype": dtype,
            "seq_len": T,
            "batch": batch,
            "d_model": self.cfg.d_model,
            **device_identity(self.device, self.cfg.threads),
            "status": "ok",
            "reason": None,
        }

    def finish(self, row: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
        config = {"growth_limit": self.cfg.growth_limit, "stability_time_cap": self.cfg.stability_time_cap}
        rec = self.writer.save(identity, row, config)
        return row | {"run_id": rec["run_id"], "session": common.SESSION, "reused": False}

    def skip_all(self, reason: str, impls: Sequence[str]) -> list[dict[str, Any]]:
        rows = []
        for T in self.cfg.seq_lens:
            for dtype in self.cfg.dtypes:
                for impl in impls:
                    row = self.base_row("error", impl, dtype, T, self.cfg.batch)
                    row |= {"status": "skipped", "reason": reason}
                    rows.append(self.finish(row, self.identity("error", impl, dtype, T, self.cfg.batch)))
                self.bar.update(1)
        for dtype in self.cfg.stability_dtypes if self.cfg.stability_len else ():
            row = self.base_row("stability", "parallel", dtype, self.cfg.stability_len, 1)
            row |= {"status": "skipped", "reason": reason}
            ident = self.identity("stability", "parallel", dtype, self.cfg.stability_len, 1)
            rows.append(self.finish(row, ident))
            self.bar.update(1)
        return rows

    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.spec.needs_cuda and self.device.type != "cuda":
            return self.skip_all("needs CUDA", ["parallel", "recurrent"])
        try:
            torch.manual_seed(cfg.seed)
            base = self.spec.build(cfg.d_model).to(self.device)
        except Exception as e:
            return self.skip_all(f"build failed: {short_error(e)}", ["parallel", "recurrent"])
        available = list(base.implementations())
        impls = [i for i in (cfg.impls or available) if i in available]
        rows: list[dict[str, Any]] = []
        skip_reason = None
        last: tuple[int, float] | None = None
        with nan_fill_uninitialized(cfg.nan_fill):
            for T in cfg.seq_lens:
                if last is not None and skip_reason is None:
                    pred = last[1] * T / last[0]
                    if pred > cfg.time_cap:
                        skip_reason = (
                            f"time cap {cfg.time_cap} s: T={last[0]} took {last[1]:.3g} s, "
                            f"predicted {pred:.3g} s at T={T}"
                        )
                t0 = time.perf_counter()
                for dtype in cfg.dtypes:
                    self.bar.set_postfix_str(f"{self.name} {dtype} T={T}", refresh=False)
                    rows.extend(self.errors_at(base, impls, dtype, T, skip_reason))
                    self.bar.update(1)
                last = (T, time.perf_counter() - t0)
            for dtype in cfg.stability_dtypes if cfg.stability_len else ():
                self.bar.set_postfix_str(f"{self.name} stability {dtype}", refresh=False)
                rows.append(self.stability(base, dtype))
                self.bar.update(1)
        return rows

    # -- errors against float64 ------------------------------------------------------------------
    def errors_at(self, base, impls: Sequence[str], dtype_str: str, T: int, skip: str | None) -> list[dict]:
        cfg = self.cfg
        dtype = parse_dtype(dtype_str)
        idents = {impl: self.identity("error", impl, dtype_str, T, cfg.batch) for impl in impls}
        cached = {impl: self.writer.cached(ident, cfg.force) for impl, ident in idents.items()}
        if all(c is not None for c in cached.values()):
            return [
                dict(c["result"]) | {"run_id": c["run_id"], "session": c.get("session"), "reused": True}
                for c in cached.values()
            ]
        reason = skip
        if reason is None and dtype not in self.spec.cls.supported_dtypes:
            reason = f"{dtype_str} not in the candidate's supported_dtypes"
        results: dict[str, dict[str, Any]] = {}
        if reason is None:
            try:
                results = self._compute_errors(base, impls, dtype, T)
            except Exception as e:
                reason = ("out of memory: " if is_oom(e) else "") + short_error(e)
                status = "skipped" if is_oom(e) else "error"
                results = {impl: {"status": status, "reason": reason} for impl in impls}
        else:
            results = {impl: {"status": "skipped", "reason": reason} for impl in impls}
        rows = []
        for impl in impls:
            row = self.base_row("error", impl, dtype_str, T, cfg.batch) | results[impl]
            rows.append(self.finish(row, idents[impl]))
        return rows

    def _compute_errors(self, base, impls: Sequence[str], dtype: torch.dtype, T: int) -> dict[str, dict]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed + T)
        x64 = torch.randn(cfg.batch, T, cfg.d_model, generator=gen, dtype=torch.float64)
        g64 = torch.randn(cfg.batch, T, cfg.d_model, generator=gen, dtype=torch.float64)
        low = copy.deepcopy(base).to(dtype)
        ref = copy.deepcopy(low).to(torch.float64)  # the same rounded weights, exactly
        low.eval()
        ref.eval()
        x = x64.to(self.device, dtype)
        g = g64.to(self.device, dtype)
        x_ref, g_ref = x.to(torch.float64), g.to(torch.float64)
        # reference: recurrent form in float64, with its final state
        xr = x_ref.detach().requires_grad_(True)
        y_ref, s_ref = recurrent_with_state(ref, xr)
        (gx_ref,) = torch.autograd.grad(y_ref, xr, grad_outputs=g_ref)
        y_ref = y_ref.detach()
        with torch.no_grad():
            _, s_low = recurrent_with_state(low, x)
        state_err = rms_ratio(s_low, s_ref)
        fns = low.implementations()
        out: dict[str, dict] = {}
        for impl in impls:
            t0 = time.perf_counter()
            y, gx = output_and_grad(fns[impl], x, g)
            finite = bool(torch.isfinite(y).all() and torch.isfinite(gx).all())
            out[impl] = {
                "out_rms": rms_ratio(y, y_ref),
                "out_max_abs": max_abs(y, y_ref),
                "grad_rms": rms_ratio(gx, gx_ref),
                "grad_max_abs": max_abs(gx, gx_ref),
                "state_err": state_err if impl == "recurrent" else None,
                "state_max_abs": max_abs(s_low, s_ref) if impl == "recurrent" else None,
                "finite": finite,
                "ref_rms": rms(y_ref),
                "seconds": time.perf_counter() - t0,
            }
        return out

    # -- long-sequence stability -------------------------------------------------------------------
    def stability(self, base, dtype_str: str) -> dict[str, Any]:
        cfg = self.cfg
        T = cfg.stability_len
        ident = self.identity("stability", "parallel", dtype_str, T, 1)
        cached = self.writer.cached(ident, cfg.force)
        if cached is not None:
            return dict(cached["result"]) | {
                "run_id": cached["run_id"],
                "session": cached.get("session"),
                "reused": True,
            }
        row = self.base_row("stability", "parallel", dtype_str, T, 1)
        dtype = parse_dtype(dtype_str)
        if dtype not in self.spec.cls.supported_dtypes:
            row |= {"status": "skipped", "reason": f"{dtype_str} not in the candidate's supported_dtypes"}
            return self.finish(row, ident)
        try:
            row |= self._stability(base, dtype, T)
        except Exception as e:
            row |= {"status": "skipped" if is_oom(e) else "error", "reason": short_error(e)}
        return self.finish(row, ident)

    def _stability(self, base, dtype: torch.dtype, T: int) -> dict[str, Any]:
        cfg = self.cfg
        model = copy.deepcopy(base).to(dtype).eval()
        gen = torch.Generator().manual_seed(cfg.seed + 7)
        x = torch.randn(1, T, cfg.d_model, generator=gen, dtype=torch.float64).to(self.device, dtype)
        with torch.no_grad():
            y = model(x)
            out_finite = bool(torch.isfinite(y).all())
            out_max = y.abs().max().item() if out_finite else float("nan")
            checkpoints = {T // 4: None, T // 2: None, T: None}
            state = model.init_state(1, device=self.device, dtype=dtype)
            t0 = time.perf_counter()
            reached = 0
            for t in range(T):
                _, state = model.step(x[:, t], state)
                reached = t + 1
                if reached in checkpoints:
                    checkpoints[reached] = rms(state)
                if (t & 255) == 255 and time.perf_counter() - t0 > cfg.stability_time_cap:
                    break
        seen = {k: v for k, v in checkpoints.items() if v is not None}
        state_finite = all(math.isfinite(v) for v in seen.values()) and math.isfinite(rms(state))
        growth = None
        if T in seen and seen[T // 4] is not None and seen[T // 4] > 0:
            growth = seen[T] / seen[T // 4]
        bounded = state_finite and (growth is None or growth <= cfg.growth_limit)
        note = None
        if reached < T:
            note = f"recurrent state checked up to t={reached} of {T} (stability_time_cap {cfg.stability_time_cap} s)"
        return {
            "out_finite": out_finite,
            "out_max_abs_value": out_max,
            "state_rms": {str(k): v for k, v in seen.items()},
            "state_final_rms": rms(state),
            "state_steps": reached,
            "state_growth": growth,
            "state_finite": state_finite,
            "stable": bool(out_finite and bounded),
            "note": note,
        }
