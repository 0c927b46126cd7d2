"""The ``scans`` family: one recurrence, many algorithms, error and time side by side.

Three families, each with the sequential (or direct) reference run in float64 on the same rounded
inputs, and each algorithm timed like the throughput benchmark (``harness.timing``):

- ``dense`` (seed 026): ``h_t = A_t h_{t-1} + b_t`` with dense N x N ``A_t`` by sequential,
  Hillis-Steele, Blelloch, chunkwise and cyclic reduction (``harness.bench.algorithms.scan_algorithms``).
  Inputs: ``A_t = sigma G_t / sqrt(N)``, ``G_t`` standard normal, ``sigma = 0.9`` (products contract
  slowly, as in a stable SSM), ``b_t`` standard normal. Reported with the counts of N x N matrix
  products and matrix-vector products, and speedups over sequential and over Hillis-Steele
  (the "prefix scan" seed 026 compared against).
- ``resolvent`` (seed 011): the DPLR resolvent solve ``(I - delta_t/2 A)^{-1} x_t`` by a dense solve
  (reference), Woodbury, and truncated Neumann with k terms (``harness.bench.algorithms.resolvent``), on S4's
  HiPPO-LegS matrix (rank 1) at several step sizes, and on a random DPLR matrix. ``rho`` is the largest
  spectral radius of the series' r x r iteration matrix over the tokens: the error goes as rho^(k+1).
- ``deltanet`` (seed 002): the delta rule by the token loop, naive WY and block-SSD
  (``harness.bench.algorithms.wy_vs_ssd``), L2-normalised keys, ``beta = sigmoid(normal)``.

Records of kind ``scans``; identity = family, algorithm, its parameters, shape, dtype, the kernel
source hash, device and thread count, method version.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.bench import common
from harness.bench.algorithms import resolvent as resolvent_mod
from harness.bench.algorithms import scan_algorithms as scan_mod
from harness.bench.algorithms import wy_vs_ssd as wy_mod
from harness.bench.common import (
    RecordWriter,
    device_identity,
    dtype_name,
    is_oom,
    parse_dtype,
    short_error,
)
from harness.bench.numerics import max_abs, rms_ratio
from harness.environment import resolve_device
from harness.progress import bar as progress
from harness.results import RecordStore
from harness.timing import (
    check_clock,
    clock_function,
    default_clock,
    runs_on_calling_thread,
    sync,
    time_cpu,
    time_cuda,
    time_once,
)

METHOD_VERSION = 3  # 2: the clock is part of the method; 3: samples by the public Timer API
FAMILIES = ("dense", "resolvent", "deltanet")


@dataclass
class ScansConfig:
    device: str = "cpu"
    families: Sequence[str] = FAMILIES
    dtypes: Sequence[str] = ("float32", "float64")
    seq_lens: Sequence[int] | None = None  # per family defaults below
    state_sizes: Sequence[int] = (16, 64)  # dense: N
    chunk_size: int = 64  # dense chunkwise and deltanet
    batch: int = 1
    heads: int = 1
    resolvent_n: int = 64
    resolvent_deltas: Sequence[float] = (1e-3, 1e-2, 1e-1)
    neumann_ks: Sequence[int] = (1, 2, 4, 8, 16)
    deltanet_dim: int = 64
    deltanet_heads: int = 4
    time_cap: float = 2.0  # seconds per call
    min_run_time: float = 0.2
    min_samples: int = 5
    threads: int | None = None
    clock: str | None = None  # "cpu" (thread CPU time) or "wall"; None: cpu for 1-thread CPU runs
    seed: int = 0
    force: bool = False
    progress: bool = True

    def resolved(self) -> ScansConfig:
        dev = resolve_device(self.device)
        for f in self.families:
            if f not in FAMILIES:
                raise ValueError(f"unknown scans family {f!r}; allowed: {', '.join(FAMILIES)}")
        threads = self.threads or (torch.get_num_threads() if dev.type == "cuda" else 1)
        return ScansConfig(
            **{
                **asdict(self),
                "device": str(dev),
                "dtypes": tuple(dtype_name(parse_dtype(d)) for d in self.dtypes),
                "threads": threads,
                "clock": check_clock(self.clock or default_clock(dev, threads), dev, threads),
            }
        )

    def lens(self, family: str) -> tuple[int, ...]:
        if self.seq_lens:
            return tuple(sorted(set(self.seq_lens)))
        return {"dense": (256, 1024, 4096), "resolvent": (1024,), "deltanet": (512, 2048)}[family]


def module_hash(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        h.update(inspect.getsource(m).encode())
    return h.hexdigest()[:16]


@dataclass
class _Case:
    """One timed algorithm on one input: run() -> output tensor (compared to ``ref``)."""

    algorithm: str
    params: dict[str, Any]
    run: Callable[[], torch.Tensor]
    extra: dict[str, Any]
    count_ops: bool = False  # dense family: count matrix products during the first call


def run_scans(config: ScansConfig | None = None, store: RecordStore | None = None) -> list[dict[str, Any]]:
    cfg = (config or ScansConfig()).resolved()
    device = torch.device(cfg.device)
    writer = RecordWriter(store, "scans", device)
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    try:
        problems = [p for f in cfg.families for p in _problems(f, cfg)]
        with progress(len(problems), "scans", cfg.progress) as bar:
            for family, shape, dtype, make in problems:
                bar.set_postfix_str(f"{family} {shape} {dtype}", refresh=False)
                rows.extend(_run_problem(family, shape, dtype, make, cfg, device, writer))
                bar.update(1)
    finally:
        torch.set_num_threads(prev)
    _add_speedups(rows)
    return rows


def _problems(family: str, cfg: ScansConfig):
    """(family, shape dict, dtype, builder) for each input problem of the family's grid."""
    out = []
    for dtype in cfg.dtypes:
        for T in cfg.lens(family):
            if family == "dense":
                for N in cfg.state_sizes:
                    out.append(
                        (family, {"T": T, "N": N, "B": cfg.batch, "H": cfg.heads}, dtype, _dense_cases)
                    )
            elif family == "resolvent":
                regimes = [("hippo-legs", d) for d in cfg.resolvent_deltas] + [("random-rank2", 0.1)]
                for regime, delta in regimes:
                    shape = {"T": T, "N": cfg.resolvent_n, "B": cfg.batch, "H": cfg.heads, "regime": regime}
                    shape["delta"] = delta
                    out.append((family, shape, dtype, _resolvent_cases))
            else:
                D, H = cfg.deltanet_dim, cfg.deltanet_heads
                out.append(
                    (
                        family,
                        {"T": T, "D": D, "B": cfg.batch, "H": H, "C": cfg.chunk_size},
                        dtype,
                        _delta_cases,
                    )
                )
    return out


# -- problem builders: (reference output in float64, cases in the dtype, family hash) -----------------


def _dense_cases(shape, dtype: torch.dtype, device, cfg: ScansConfig):
    T, N, B, H = shape["T"], shape["N"], shape["B"], shape["H"]
    g = torch.Generator().manual_seed(cfg.seed)
    A = (0.9 * torch.randn(B, T, H, N, N, generator=g, dtype=torch.float64) / math.sqrt(N)).to(device, dtype)
    b = torch.randn(B, T, H, N, generator=g, dtype=torch.float64).to(device, dtype)
    ref, _ = scan_mod.scan_sequential(A.double(), b.double())
    cases = []
    for impl in scan_mod.IMPLS:
        params = {"chunk_size": cfg.chunk_size} if impl == "chunkwise" else {}
        run = lambda impl=impl, params=params: scan_mod.dense_linear_scan(A, b, impl=impl, **params)[0]
        cases.append(_Case(impl, params, run, {}, count_ops=True))
    return ref, cases, module_hash(scan_mod)


def _resolvent_inputs(shape, dtype: torch.dtype, device, seed: int):
    T, N, B, H = shape["T"], shape["N"], shape["B"], shape["H"]
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    g = torch.Generator().manual_seed(seed)
    if shape["regime"] == "hippo-legs":
        lam, P, Q = resolvent_mod.hippo_legs_dplr(N)
        lam, P, Q = lam.expand(H, N), P.expand(H, N, 1), Q.expand(H, N, 1)
    else:  # random DPLR: S4D-Lin-like diagonal, rank 2, entries ~ 1/sqrt(N)
        n = torch.arange(N, dtype=torch.float64)
        lam = torch.complex(torch.full((N,), -0.5, dtype=torch.float64), math.pi * n).expand(H, N)
        P = torch.complex(
            torch.randn(H, N, 2, generator=g, dtype=torch.float64),
            torch.randn(H, N, 2, generator=g, dtype=torch.float64),
        )
        Q = torch.complex(
            torch.randn(H, N, 2, generator=g, dtype=torch.float64),
            torch.randn(H, N, 2, generator=g, dtype=torch.float64),
        )
        P, Q = P / math.sqrt(N), Q / math.sqrt(N)
    # per-token steps: the regime's delta times a log-uniform jitter in [1/2, 2]
    jitter = torch.exp((torch.rand(B, T, H, generator=g, dtype=torch.float64) * 2 - 1) * math.log(2))
    delta = shape["delta"] * jitter
    x = torch.complex(
        torch.randn(B, T, H, N, generator=g, dtype=torch.float64),
        torch.randn(B, T, H, N, generator=g, dtype=torch.float64),
    )
    rdtype = torch.float64 if dtype == torch.float64 else torch.float32
    return tuple(t.to(device, cdtype) for t in (lam, P, Q)) + (delta.to(device, rdtype), x.to(device, cdtype))


def _resolvent_cases(shape, dtype: torch.dtype, device, cfg: ScansConfig):
    lam, P, Q, delta, x = _resolvent_inputs(shape, dtype, device, cfg.seed)
    up = (
        lam.to(torch.complex128),
        P.to(torch.complex128),
        Q.to(torch.complex128),
        delta.double(),
        x.to(torch.complex128),
    )
    ref, _ = resolvent_mod.dplr_resolvent(*up, impl="dense")
    rho = resolvent_mod.neumann_radius(*up[:4]).max().item()
    cases = [
        _Case(
            "dense",
            {},
            lambda: resolvent_mod.dplr_resolvent(lam, P, Q, delta, x, impl="dense")[0],
            {"rho": rho},
        ),
        _Case(
            "woodbury",
            {},
            lambda: resolvent_mod.dplr_resolvent(lam, P, Q, delta, x, impl="woodbury")[0],
            {"rho": rho},
        ),
    ]
    for k in cfg.neumann_ks:
        run = lambda k=k: resolvent_mod.dplr_resolvent(lam, P, Q, delta, x, impl="neumann", k=k)[0]
        cases.append(_Case("neumann", {"k": k}, run, {"rho": rho}))
    return ref, cases, module_hash(resolvent_mod)


def _delta_cases(shape, dtype: torch.dtype, device, cfg: ScansConfig):
    T, D, B, H, C = shape["T"], shape["D"], shape["B"], shape["H"], shape["C"]
    g = torch.Generator().manual_seed(cfg.seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64))
    q, k, v, beta = (t.to(device, dtype) for t in (q, k, v, beta))
    ref, _ = wy_mod.delta_rule_sequential(
        q.double(), k.double(), v.double(), beta.double(), q.new_zeros(B, H, D, D, dtype=torch.float64)
    )
    cases = []
    for impl in wy_mod.IMPLS:
        params = {} if impl == "sequential" else {"chunk_size": C}
        run = lambda impl=impl, params=params: wy_mod.delta_rule_chunk(q, k, v, beta, impl=impl, **params)[0]
        cases.append(_Case(impl, params, run, {}))
    modules = [wy_mod]
    dr = _project_delta_rule()
    if dr is not None:  # the candidates' own chunk kernel, for comparison
        modules.append(dr)
        for solve in dr.SOLVES:
            params = {"chunk_size": C, "solve": solve}
            run = lambda params=params: dr.delta_rule(q, k, v, beta, impl="chunk", **params)[0]
            cases.append(_Case("delta_rule.chunk", params, run, {}))
    return ref, cases, module_hash(*modules)


def _project_delta_rule():
    """``harness.kernels.delta_rule`` (another area's kernel) if present with the expected API."""
    try:
        from harness.kernels import delta_rule as dr
    except ImportError:
        return None
    return dr if hasattr(dr, "delta_rule") and hasattr(dr, "SOLVES") else None


# -- running -----------------------------------------------------------------------------------------


def _run_problem(
    family, shape, dtype_str, make, cfg: ScansConfig, device, writer: RecordWriter
) -> list[dict]:
    dtype = parse_dtype(dtype_str)
    base = {
        "family": family,
        **{k: shape[k] for k in shape},
        "dtype": dtype_str,
        **device_identity(device, cfg.threads),
    }
    try:
        ref, cases, src_hash = make(shape, dtype, device, cfg)
    except Exception as e:
        return [
            base | {"algorithm": "*", "status": "skipped" if is_oom(e) else "error", "reason": short_error(e)}
        ]
    rows = []
    for case in cases:
        identity = {
            "bench": "scans",
            "method_version": METHOD_VERSION,
            "family": family,
            "algorithm": case.algorithm,
            "params": case.params,
            "shape": shape,
            "dtype": dtype_str,
            "seed": cfg.seed,
            "source_hash": src_hash,
            "clock": cfg.clock,
            **device_identity(device, cfg.threads),
        }
        cached = writer.cached(identity, cfg.force)
        if cached is not None:
            rows.append(
                dict(cached["result"])
                | {"run_id": cached["run_id"], "session": cached.get("session"), "reused": True}
            )
            continue
        row = base | {
            "algorithm": case.algorithm,
            "params": case.params,
            **case.extra,
            "status": "ok",
            "reason": None,
        }
        try:
            row |= _measure(case, ref, cfg, device)
        except Exception as e:
            row |= {"status": "skipped" if is_oom(e) else "error", "reason": short_error(e)}
        rec = writer.save(identity, row, {"time_cap": cfg.time_cap, "min_run_time": cfg.min_run_time})
        rows.append(row | {"run_id": rec["run_id"], "session": common.SESSION, "reused": False})
    return rows


def _measure(case: _Case, ref: torch.Tensor, cfg: ScansConfig, device) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    clock = "cuda-events"
    with torch.no_grad():
        with scan_mod.count_ops() as c:
            if device.type == "cpu":
                on_thread, wall, thread = runs_on_calling_thread(case.run)
                clock = cfg.clock if on_thread else "wall"
                first = thread if clock == "cpu" else wall
            else:
                first = wall = time_once(case.run, device)
        if case.count_ops:
            counts = {"matmat": c.matmat, "matvec": c.matvec}
        if first > 10 * cfg.time_cap:
            return {
                "status": "skipped",
                "reason": f"time cap {cfg.time_cap} s: the first call took {first:.3g} s",
            }
        now = clock_function("wall" if clock == "cuda-events" else clock)
        t0 = now()
        out = case.run()
        sync(device)
        call = now() - t0
        if call > cfg.time_cap:
            return {"status": "skipped", "reason": f"time cap {cfg.time_cap} s: one call took {call:.3g} s"}
        if device.type == "cuda":
            stats = time_cuda(case.run)
        else:
            estimate = max(call, min(wall, 10 * call))  # block size from wall time: see time_cpu
            stats = time_cpu(case.run, cfg.threads, estimate, cfg.min_run_time, cfg.min_samples, clock=clock)
    return counts | {
        "rel_err": rms_ratio(out, ref),
        "max_abs": max_abs(out, ref),
        "median_s": stats.median,
        "p20_s": stats.p20,
        "p80_s": stats.p80,
        "n_samples": stats.n,
        "timing_method": stats.method,
        "clock": clock,
    }


def problem_key(r: dict[str, Any]) -> tuple:
    return tuple(
        r.get(k)
        for k in (
            "family",
            "T",
            "N",
            "D",
            "B",
            "H",
            "C",
            "regime",
            "delta",
            "dtype",
            "device_name",
            "threads",
        )
    )


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """``x_seq``: sequential's time / this time; ``x_prefix``: Hillis-Steele's time / this time (dense);
    ``x_woodbury`` for the resolvent family. Only between rows of one session."""
    by_problem: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and not r.get("params"):
            by_problem.setdefault(problem_key(r), {})[r["algorithm"]] = r
    refs = {"x_seq": "sequential", "x_prefix": "hillis_steele", "x_woodbury": "woodbury", "x_dense": "dense"}
    for r in rows:
        algs = by_problem.get(problem_key(r), {})
        for col, alg in refs.items():
            b = algs.get(alg)
            ok = (
                r.get("status") == "ok"
                and b is not None
                and b.get("session") == r.get("session")
                and r["median_s"] > 0
            )
            if b is not None or col in r:
                r[col] = b["median_s"] / r["median_s"] if ok else None
