"""Throughput of candidates: forward, forward+backward, and the per-token decode ``step``.

Over a grid of sequence lengths (and batch, d_model, dtype), each pass of each implementation is
timed after warmup (see ``harness.timing`` for the method: ``torch.utils.benchmark`` on CPU,
``triton.testing.do_bench`` with an L2 flush on CUDA) and reported as median with p20 / p80 per
call, tokens/s, and the peak extra memory of one call. On CUDA the FLOPs of one call
(``torch.utils.flop_counter``) give achieved TFLOP/s and the fraction of the device's peak.

Rounds: on CPU the grid is measured in ``rounds`` rounds (24 by default) and a row's median, p20 and
p80 come from the samples of all its rounds together. This 2-core VM's speed wanders: the same
forward call, timed back to back in thread CPU time with nothing else running, ranged 5-11 ms, its
3-second medians 6.8-10.1 ms and its 15-second medians 7.9-9.5 ms. Samples from one moment share
that moment's speed, so a row's median is only as steady as the number of moments it was sampled
at; spreading each row over many rounds, minutes apart, averages the drift away. The first round
does the setup (warmup, the time-cap checks, peak memory, the decode state) and times each row with
its share of the budget; a row then goes on in ``rounds_planned`` rounds: all of them when a call is
shorter than its share of ``min_run_time`` per round, else ``min_samples`` (one call each) spread
evenly over the run (``spread_rounds``), so the budget per row does not grow with the rounds. Each
sample is warmed up by the Timer call that takes it (``harness.timing``), so a later round needs no
warm-up of its own. A row's record is saved after its first round, marked incomplete, and
again, complete, after its last; a rerun measures incomplete rows again. The decode ``step`` of a
growing state (a KV cache) is timed in the first round only, since its state exists only at the
length it was built to.

Speed probe (CPU): averaging cannot remove the drift of the machine's speed between runs (two
back-to-back 5-minute runs of the transitions grid differed by 13 % over all rows). So before each
block of a row's samples a fixed small workload (``harness.timing.speed_probe``) is timed for a few ms, and
``x_probe`` is the median of the row's samples each divided by the probe time of its block: the
call's time in probe calls, a unit that moves with the machine. ``median_s`` stays the plain time;
``x_probe`` is the number to compare across runs on a shared machine, ``x_base`` (the baseline
candidate at the same shape, same run) the number to compare candidates by.

Clock: on CPU with one thread (the default there) times are the measuring thread's CPU time
(``time.thread_time``), not wall time, so other jobs on a shared machine do not inflate them; the time
cap is judged on the same clock. If a call's work turns out to run on other threads, that shape falls
back to wall time (the row's ``clock`` says which). ``clock="wall"`` forces wall time.

The passes:

- ``fwd``: the implementation under ``torch.no_grad()`` (inference), module in eval mode;
- ``fwd_bwd``: ``zero_grad``, forward with an input that requires grad, ``backward`` of a fixed
  random output gradient (what a training step does), module in train mode;
- ``step``: one ``step(x_t, state)`` call under ``no_grad`` with the state reached after ``T``
  tokens (built by stepping through random tokens, once per candidate and growing with T), so
  softmax's growing KV cache is timed at its real size; tokens/s = batch / time. A state whose size
  does not change over the first T tokens is constant-size (a recurrent state): its step costs the
  same at any position, so it is not stepped further and the longer T's reuse it (``state_tokens``
  in the row says how many tokens the timed state holds).

Implementations: ``parallel`` (``forward``) on CPU; on CUDA every entry of ``implementations()`` but
the ``recurrent`` reference (e.g. a ``triton`` fast path). ``impls=`` overrides.

Shapes a candidate cannot run are ``skipped`` rows with the reason, never dropped: needs CUDA,
dtype not in ``supported_dtypes``, out of memory, or the time cap — a call predicted (from the
shorter T's and the fitted exponent) or measured (both untimed calls) to take longer than
``time_cap`` seconds. Errors are ``error`` rows. Finished rows are records of kind ``throughput``; a rerun reuses them unless
``force``. The baseline (softmax by default) is always run with the others and is re-measured
whenever any other row is measured, so ``x_base`` (time / baseline time at the same shape) compares
numbers from one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness.bench import common, costs
from harness.bench.common import (
    RecordWriter,
    candidate_identity,
    device_identity,
    dtype_name,
    is_oom,
    parse_dtype,
    short_error,
)
from harness.bench.measure import count_flops, fit_exponent, peak_memory_bytes, peak_tflops
from harness.environment import resolve_device
from harness.mixer import state_bytes
from harness.progress import bar as progress
from harness.registry import get_candidate
from harness.results import RecordStore
from harness.timing import (
    check_clock,
    default_clock,
    runs_on_calling_thread,
    speed_probe,
    stats_from,
    time_cpu,
    time_cuda,
    time_once,
    time_probe,
)

# 2: the clock is part of the method; 3: samples pooled over rounds; 4: 24 rounds, rows spread;
# 5: samples by the public Timer API (harness.timing): a block per sample, each warmed up by the Timer
METHOD_VERSION = 5
PASSES = ("fwd", "fwd_bwd", "step")
CPU_SEQ_LENS = (256, 1024, 4096, 8192)
CPU_ROUNDS = 24
CUDA_SEQ_LENS = (1024, 4096, 16384, 65536)


@dataclass
class ThroughputConfig:
    """Grid and method settings; ``None`` fields take the device's defaults."""

    device: str = "cpu"
    dtypes: Sequence[str] = ("float32",)
    seq_lens: Sequence[int] | None = None  # CPU_SEQ_LENS / CUDA_SEQ_LENS
    batch: int = 1
    d_model: int = 64
    passes: Sequence[str] = PASSES
    impls: Sequence[str] | None = None
    time_cap: float | None = None  # seconds per call: 1.0 on CPU, 10.0 on CUDA
    decode_build_cap: float = 60.0  # seconds to step through T tokens to reach the decode state
    min_run_time: float = 0.3  # seconds of timed calls per row, over all rounds
    min_samples: int = 6  # timed blocks per row, over all rounds
    rounds: int | None = None  # timing rounds over the grid: 24 on CPU, 1 on CUDA (do_bench)
    threads: int | None = None  # torch threads; None: 1 on CPU (stable on a shared machine), else torch's
    clock: str | None = None  # "cpu" (thread CPU time) or "wall"; None: cpu for 1-thread CPU runs
    baseline: str | None = "softmax"
    force: bool = False
    progress: bool = True

    def resolved(self) -> ThroughputConfig:
        dev = resolve_device(self.device)
        for p in self.passes:
            if p not in PASSES:
                raise ValueError(f"unknown pass {p!r}; allowed: {', '.join(PASSES)}")
        seq = tuple(sorted(set(self.seq_lens or (CUDA_SEQ_LENS if dev.type == "cuda" else CPU_SEQ_LENS))))
        if any(t < 1 for t in seq) or self.batch < 1 or self.d_model < 1:
            raise ValueError(
                f"seq_lens, batch and d_model must be positive: {seq}, {self.batch}, {self.d_model}"
            )
        cap = self.time_cap if self.time_cap is not None else (10.0 if dev.type == "cuda" else 1.0)
        dtypes = tuple(dtype_name(parse_dtype(d)) for d in self.dtypes)
        threads = self.threads or (torch.get_num_threads() if dev.type == "cuda" else 1)
        clock = check_clock(self.clock or default_clock(dev, threads), dev, threads)
        rounds = self.rounds if self.rounds is not None else (1 if dev.type == "cuda" else CPU_ROUNDS)
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        return ThroughputConfig(
            **{
                **asdict(self),
                "device": str(dev),
                "seq_lens": seq,
                "time_cap": cap,
                "dtypes": dtypes,
                "threads": threads,
                "clock": clock,
                "rounds": rounds,
            }
        )


def run_throughput(
    names: Sequence[str], config: ThroughputConfig | None = None, store: RecordStore | None = None
) -> list[dict[str, Any]]:
    """Measure every (candidate, dtype, impl, pass, T) of the grid; one row per job."""
    cfg = (config or ThroughputConfig()).resolved()
    device = torch.device(cfg.device)
    names = list(names)
    if cfg.baseline and cfg.baseline not in names:
        get_candidate(cfg.baseline)
        names.insert(0, cfg.baseline)
    writer = RecordWriter(store, "throughput", device)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    try:
        # the baseline is re-measured whenever anything else is, so ratios come from one process
        others_cached = all(_all_cached(n, cfg, writer) for n in names if n != cfg.baseline)
        est_jobs = len(names) * len(cfg.dtypes) * len(cfg.seq_lens) * len(cfg.passes)
        runners: list[_CandidateRunner] = []
        with progress(est_jobs, "throughput", cfg.progress) as bar:
            for name in names:
                force = cfg.force or (name == cfg.baseline and not others_cached)
                cand_rows, cand_runners = _run_candidate(name, cfg, device, writer, force, bar)
                rows.extend(cand_rows)
                runners.extend(cand_runners)
            bar.total += sum(run.due_count(r) for r in range(1, cfg.rounds) for run in runners)
            bar.refresh()
            for r in range(1, cfg.rounds):
                for runner in runners:
                    runner.retime_round(r, bar)
    finally:
        torch.set_num_threads(prev_threads)
    add_exponents(rows)
    add_baseline_ratios(rows, cfg.baseline)
    add_flop_ratios(rows, cfg.baseline)
    return rows


# -- one candidate ---------------------------------------------------------------------------------


def spread_rounds(planned: int, rounds: int) -> list[int]:
    """The rounds (of ``rounds``, 0 first) that time a row planned for ``planned`` of them, evenly
    spaced from round 0, so a slow row timed in few rounds still has samples from the whole run."""
    n = min(planned, rounds)
    return sorted({int(i * rounds / n) for i in range(n)})


def _impl_names(model, device: torch.device, wanted: Sequence[str] | None) -> list[str]:
    available = list(model.implementations())
    if wanted:
        return [i for i in wanted if i in available] or []
    if device.type == "cuda":
        return [i for i in available if i != "recurrent"]
    return ["parallel"] if "parallel" in available else available[:1]


def _jobs(cfg: ThroughputConfig, impls: Sequence[str]) -> list[tuple[str, str, int]]:
    """(pass, impl, T) in run order: T ascending within each (pass, impl) series."""
    out = []
    for p in cfg.passes:
        for impl in ["step"] if p == "step" else impls:
            out.extend((p, impl, t) for t in cfg.seq_lens)
    return out


def _identity(name: str, cfg: ThroughputConfig, dtype: str, p: str, impl: str, T: int) -> dict[str, Any]:
    device = torch.device(cfg.device)
    return {
        "bench": "throughput",
        "method_version": METHOD_VERSION,
        **candidate_identity(name),
        "pass": p,
        "impl": impl,
        "batch": cfg.batch,
        "seq_len": T,
        "d_model": cfg.d_model,
        "dtype": dtype,
        "clock": cfg.clock,
        **device_identity(device, cfg.threads),
    }


def _all_cached(name: str, cfg: ThroughputConfig, writer: RecordWriter) -> bool:
    if cfg.force or writer.store is None:
        return False
    spec = get_candidate(name)
    device = torch.device(cfg.device)
    if spec.needs_cuda and device.type != "cuda":
        return True  # nothing to measure
    model = spec.build(cfg.d_model)
    impls = _impl_names(model, device, cfg.impls)
    for dtype in cfg.dtypes:
        if parse_dtype(dtype) not in spec.cls.supported_dtypes:
            continue
        for p, impl, T in _jobs(cfg, impls):
            if writer.cached(_identity(name, cfg, dtype, p, impl, T), False) is None:
                return False
    return True


def _base_row(name: str, cfg: ThroughputConfig, dtype: str, p: str, impl: str, T: int) -> dict[str, Any]:
    device = torch.device(cfg.device)
    return {
        "candidate": name,
        "pass": p,
        "impl": impl,
        "dtype": dtype,
        "batch": cfg.batch,
        "seq_len": T,
        "d_model": cfg.d_model,
        **device_identity(device, cfg.threads),
        "status": "ok",
        "reason": None,
    }


def _run_candidate(
    name: str, cfg: ThroughputConfig, device: torch.device, writer: RecordWriter, force: bool, bar
) -> tuple[list[dict[str, Any]], list[_CandidateRunner]]:
    """The first round of one candidate's rows, and the runners that can re-time them."""
    spec = get_candidate(name)
    rows: list[dict[str, Any]] = []
    runners: list[_CandidateRunner] = []
    for dtype_str in cfg.dtypes:
        dtype = parse_dtype(dtype_str)
        reason = None
        if spec.needs_cuda and device.type != "cuda":
            reason = "needs CUDA"
        elif dtype not in spec.cls.supported_dtypes:
            reason = f"{dtype_str} not in the candidate's supported_dtypes"
        model = None
        impls: list[str] = ["parallel"]
        if reason is None:
            try:
                torch.manual_seed(0)
                model = spec.build(cfg.d_model).to(device=device, dtype=dtype)
                impls = _impl_names(model, device, cfg.impls)
            except Exception as e:  # a candidate that cannot be built at this size is a row, not a crash
                reason = f"build failed: {short_error(e)}"
        jobs = _jobs(cfg, impls)
        bar.total += len(jobs) - len(cfg.seq_lens) * len(cfg.passes)  # the estimate assumed one impl
        bar.refresh()
        if reason is not None or model is None:
            for p, impl, T in jobs:
                row = _base_row(name, cfg, dtype_str, p, impl, T) | {"status": "skipped", "reason": reason}
                rows.append(_finish(row, writer, _identity(name, cfg, dtype_str, p, impl, T), cfg))
                bar.update(1)
            continue
        runner = _CandidateRunner(name, model, cfg, device, dtype, writer, force)
        runners.append(runner)
        for p, impl, T in jobs:
            bar.set_postfix_str(f"{name} {p} {impl} T={T}", refresh=False)
            rows.append(runner.run(p, impl, T))
            bar.update(1)
    return rows, runners


def _finish(row: dict[str, Any], writer: RecordWriter, identity: dict[str, Any], cfg: ThroughputConfig):
    config = {
        "time_cap": cfg.time_cap,
        "min_run_time": cfg.min_run_time,
        "min_samples": cfg.min_samples,
        "rounds": cfg.rounds,
        "decode_build_cap": cfg.decode_build_cap,
    }
    result = {k: v for k, v in row.items() if k not in ("run_id", "session", "reused")}
    rec = writer.save(identity, result, config)
    row.update(run_id=rec["run_id"], session=common.SESSION, reused=False)
    return row


@dataclass
class _Pool:
    """A row's samples over its rounds: raw per-call seconds, and the same divided by the speed
    probe timed just before their round's block (see ``harness.timing.speed_probe``)."""

    samples: list[float]
    relative: list[float]
    probes: list[float]
    method: str

    def add(self, samples: Sequence[float], probe: float | None, method: str) -> None:
        self.samples.extend(samples)
        if probe:
            self.relative.extend(s / probe for s in samples)
            self.probes.append(probe)
        self.method = method

    def fields(self, tokens_per_call: int) -> dict[str, Any]:
        st = stats_from(self.samples, self.method)
        rel = float(np.median(self.relative)) if self.relative else None
        return {
            "median_s": st.median,
            "p20_s": st.p20,
            "p80_s": st.p80,
            "n_samples": st.n,
            "tokens_per_s": tokens_per_call / st.median,
            "x_probe": rel,
            "probe_s": float(np.median(self.probes)) if self.probes else None,
        }


class _CandidateRunner:
    """Measures the jobs of one (candidate, dtype): holds the model, inputs and the decode state."""

    def __init__(self, name, model, cfg: ThroughputConfig, device, dtype, writer, force) -> None:
        self.name, self.model, self.cfg, self.device, self.dtype = name, model, cfg, device, dtype
        self.writer, self.force = writer, force
        self.history: dict[tuple[str, str], list[tuple[int, float]]] = {}  # (pass, impl) -> (T, s)
        self.state = None
        self.state_pos = 0
        self.constant_state = False
        self.step_estimate: float | None = None
        # rows measured (not reused) with their pooled samples, for the later rounds
        self.timed: dict[tuple[str, str, int], tuple[dict[str, Any], _Pool]] = {}
        self.probe = speed_probe()
        gen = torch.Generator().manual_seed(1)
        self.decode_inputs = torch.randn(cfg.batch, 64, cfg.d_model, generator=gen).to(device, dtype)

    def run(self, p: str, impl: str, T: int) -> dict[str, Any]:
        dtype_str = dtype_name(self.dtype)
        identity = _identity(self.name, self.cfg, dtype_str, p, impl, T)
        cached = self.writer.cached(identity, self.force)
        if cached is not None:
            row = dict(cached["result"]) | {
                "run_id": cached["run_id"],
                "session": cached.get("session"),
                "reused": True,
            }
            if row.get("median_s"):
                self.history.setdefault((p, impl), []).append((T, row["median_s"]))
            return row
        row = _base_row(self.name, self.cfg, dtype_str, p, impl, T)
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            row |= self._measure(p, impl, T)
        except Exception as e:
            if is_oom(e):
                row |= {"status": "skipped", "reason": f"out of memory ({short_error(e)[:120]})"}
            else:
                row |= {"status": "error", "reason": short_error(e)}
            self._cleanup()
        # what this row cost: wall and CPU seconds of warmups, state building and timing
        row |= {"bench_wall_s": time.perf_counter() - w0, "bench_cpu_s": time.thread_time() - c0}
        pool = row.pop("_pool", None)
        if row.get("status") == "ok":
            self.history.setdefault((p, impl), []).append((T, row["median_s"]))
            if pool is not None and not row.get("complete", True):
                self.timed[(p, impl, T)] = (row, pool)
        return _finish(row, self.writer, identity, self.cfg)

    # -- rounds ------------------------------------------------------------------------------------
    def _planned_rounds(self, p: str, call: float) -> int:
        """How many rounds time a row whose call takes ``call`` seconds: every round, unless one call
        takes more than the row's share of ``min_run_time`` per round; then ``min_samples`` rounds
        (one call each), or as many as ``min_run_time`` holds if that is more. The step of a growing
        state exists at one T only: the first round alone, with the whole budget."""
        if p == "step" and not self.constant_state:
            return 1
        fits = int(self.cfg.min_run_time // call) if call > 0 else self.cfg.rounds
        return max(1, min(self.cfg.rounds, max(self.cfg.min_samples, fits)))

    def _round_budget(self, planned: int) -> tuple[float, int]:
        """``(min_run_time, min_samples)`` of one round: the row's budget split over its rounds."""
        return self.cfg.min_run_time / planned, max(1, math.ceil(self.cfg.min_samples / planned))

    def due(self, key: tuple[str, str, int], round_index: int) -> bool:
        """Whether a later round times this row (see ``spread_rounds``)."""
        return key in self.timed and round_index in spread_rounds(
            self.timed[key][0]["rounds_planned"], self.cfg.rounds
        )

    def due_count(self, round_index: int) -> int:
        return sum(self.due(k, round_index) for k in self.timed)

    def retime_round(self, round_index: int, bar) -> None:
        """Time once more each row due in this round; pool its samples; save the row after its last."""
        for key in [k for k in self.timed if self.due(k, round_index)]:
            p, impl, T = key
            bar.set_postfix_str(f"round {round_index + 1}: {self.name} {p} {impl} T={T}", refresh=False)
            row, pool = self.timed[key]
            try:
                fn, _, _ = self._make_fn(p, impl, T)
                self._time_block(fn, row["median_s"], row["rounds_planned"], row["clock"], pool)
            except Exception as e:  # keep the earlier rounds' numbers; say why this one is missing
                row["note_rounds"] = f"round {round_index + 1} failed: {short_error(e)[:120]}"
                self._cleanup()
            else:
                self.model.zero_grad(set_to_none=True)
                row.update(pool.fields(row["tokens_per_call"]))
                row["rounds_timed"] += 1
            if round_index == spread_rounds(row["rounds_planned"], self.cfg.rounds)[-1]:
                row["complete"] = True
                identity = _identity(self.name, self.cfg, dtype_name(self.dtype), p, impl, T)
                _finish(row, self.writer, identity, self.cfg)
            bar.update(1)

    def _time_block(self, fn, call: float, planned: int, clock: str, pool: _Pool) -> None:
        """One round's block of samples of a row, with the speed probe timed just before it."""
        probe = time_probe(self.probe, clock)
        stats = time_cpu(fn, self.cfg.threads, call, *self._round_budget(planned), clock=clock)
        pool.add(stats.samples, probe, stats.method)

    def _cleanup(self) -> None:
        self.model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- time cap ----------------------------------------------------------------------------------
    def _predicted(self, p: str, impl: str, T: int) -> tuple[float, str] | None:
        hist = self.history.get((p, impl), [])
        if not hist:
            return None
        t_last, s_last = max(hist)
        fitted = fit_exponent([h[0] for h in hist], [h[1] for h in hist]) if len(hist) > 1 else None
        floor = 0.0 if p == "step" else 1.0  # a sequence pass is at least linear in T
        e = max(fitted if fitted is not None else floor, floor)
        pred = s_last * (T / t_last) ** e
        return pred, f"predicted {pred:.3g} s per call from T={t_last} ({s_last:.3g} s) at exponent {e:.2f}"

    # -- measuring ---------------------------------------------------------------------------------
    def _make_fn(self, p: str, impl: str, T: int) -> tuple[Callable[[], object], list[torch.Tensor], int]:
        cfg, model = self.cfg, self.model
        gen = torch.Generator().manual_seed(T)
        x = torch.randn(cfg.batch, T, cfg.d_model, generator=gen).to(self.device, self.dtype)
        if p == "step":
            model.eval()
            x_t = self.decode_inputs[:, 0]
            state = self.state

            def fn():
                with torch.no_grad():
                    return model.step(x_t, state)

            return fn, [], cfg.batch
        impl_fn = model.implementations()[impl]
        if p == "fwd":
            model.eval()

            def fn():
                with torch.no_grad():
                    return impl_fn(x)

            return fn, [], cfg.batch * T
        model.train()
        xg = x.detach().requires_grad_(True)
        g = torch.randn(cfg.batch, T, cfg.d_model, generator=gen).to(self.device, self.dtype)

        def fn():
            model.zero_grad(set_to_none=True)
            xg.grad = None
            impl_fn(xg).backward(g)

        return fn, [xg], cfg.batch * T

    def _advance_state(self, T: int) -> str | None:
        """Step the decode state forward to T tokens; a reason string if that would exceed the cap."""
        model = self.model
        model.eval()
        with torch.no_grad():
            if self.state is None:
                self.state = model.init_state(self.cfg.batch, device=self.device, dtype=self.dtype)
                self.state_pos = 0
            if self.step_estimate is None:
                self.step_estimate = time_once(
                    lambda: model.step(self.decode_inputs[:, 0], self.state), self.device
                )
            if self.constant_state:
                return None
            need = T - self.state_pos
            pred = need * self.step_estimate
            if pred > self.cfg.decode_build_cap:
                return (
                    f"building the decode state needs {need} more steps, predicted {pred:.3g} s "
                    f"> decode_build_cap {self.cfg.decode_build_cap} s"
                )
            n_in = self.decode_inputs.shape[1]
            size_before = state_bytes(self.state)[1]
            for t in range(self.state_pos, T):
                _, self.state = model.step(self.decode_inputs[:, t % n_in], self.state)
            self.constant_state = state_bytes(self.state)[1] == size_before
            self.state_pos = T
        return None

    def _measure(self, p: str, impl: str, T: int) -> dict[str, Any]:
        cap = self.cfg.time_cap
        pred = self._predicted(p, impl, T)
        if pred is not None and pred[0] > cap:
            return {"status": "skipped", "reason": f"time cap {cap} s: {pred[1]}"}
        if p == "step":
            why = self._advance_state(T)
            if why:
                return {"status": "skipped", "reason": why}
        fn, grads, tokens = self._make_fn(p, impl, T)
        # warmup; includes one-time costs (compilation, caches). On CPU it also checks that the work
        # runs on this thread: otherwise thread CPU time would miss it and wall time is used.
        clock = "cuda-events"
        if self.device.type == "cpu":
            on_thread, wall, thread = runs_on_calling_thread(fn)
            clock = self.cfg.clock if on_thread else "wall"
            first = thread if clock == "cpu" else wall
        else:
            first = time_once(fn, self.device)
        if first > 10 * cap:  # this one is hopeless anyway
            return {"status": "skipped", "reason": f"time cap {cap} s: the first call took {first:.3g} s"}
        # the second call: peak memory, and its time (by the clock) for the cap and the block size
        peak, mem_method, call = peak_memory_bytes(
            fn, self.device, "wall" if clock == "cuda-events" else clock
        )
        # judged on the faster of the two: a 0.7 s call can take over 1 s once on a shared machine,
        # which skipped such rows in some runs and not others
        if min(first, call) > cap:
            reason = f"time cap {cap} s: both untimed calls took longer ({first:.3g} s, {call:.3g} s)"
            return {"status": "skipped", "reason": reason}
        out: dict[str, Any] = {"peak_mem_bytes": peak, "mem_method": mem_method}
        if p == "step":
            out["state_tokens"] = self.state_pos
        if self.device.type == "cuda":
            flops = count_flops(fn)
            stats = time_cuda(fn, grad_to_none=grads)
            planned, method = 1, stats.method
            timed = {
                "median_s": stats.median,
                "p20_s": stats.p20,
                "p80_s": stats.p80,
                "n_samples": stats.n,
                "tokens_per_s": tokens / stats.median,
            }
        else:
            flops = None
            planned = self._planned_rounds(p, call)
            pool = _Pool([], [], [], "")
            self._time_block(fn, call, planned, clock, pool)
            timed = pool.fields(tokens) | {"_pool": pool}
            method = pool.method
        self.model.zero_grad(set_to_none=True)
        out |= timed | {
            "rounds_timed": 1,
            "rounds_planned": planned,
            "complete": planned == 1,
            "timing_method": method,
            "clock": clock,
            "tokens_per_call": tokens,
            "flops": flops,
        }
        if flops:
            peak_tf, peak_key = peak_tflops(self.writer.env["device_name"], self.dtype)
            achieved = flops / timed["median_s"] / 1e12
            out |= {
                "tflops": achieved,
                "peak_tflops": peak_tf,
                "peak_key": peak_key,
                "peak_frac": (achieved / peak_tf) if peak_tf else None,
            }
        return out


# -- derived columns -------------------------------------------------------------------------------


def series_key(row: dict[str, Any]) -> tuple:
    return tuple(
        row.get(k)
        for k in ("candidate", "pass", "impl", "dtype", "batch", "d_model", "device_name", "threads")
    )


def add_exponents(rows: list[dict[str, Any]]) -> None:
    """``exponent``: log-log least-squares slope of median time in T over each series' ok rows."""
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(series_key(r), []).append(r)
    for members in series.values():
        ok = [r for r in members if r.get("status") == "ok" and r.get("median_s")]
        e = fit_exponent([r["seq_len"] for r in ok], [r["median_s"] for r in ok])
        for r in members:
            r["exponent"] = e
            r["exponent_points"] = len(ok)


def add_baseline_ratios(rows: list[dict[str, Any]], baseline: str | None) -> None:
    """``x_base``: time / baseline's time at the same shape, when both were measured in one session."""
    if not baseline:
        return
    base: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["candidate"] == baseline and r.get("status") == "ok":
            impl = "step" if r["pass"] == "step" else "any"
            if r["impl"] in ("parallel", "step"):
                base[(r["pass"], impl, r["dtype"], r["batch"], r["seq_len"], r["d_model"])] = r
    for r in rows:
        impl = "step" if r["pass"] == "step" else "any"
        b = base.get((r["pass"], impl, r["dtype"], r["batch"], r["seq_len"], r["d_model"]))
        ok = r.get("status") == "ok" and b is not None and b.get("session") == r.get("session")
        r["x_base"] = r["median_s"] / b["median_s"] if ok and not math.isclose(b["median_s"], 0) else None


def add_flop_ratios(rows: list[dict[str, Any]], baseline: str | None) -> None:
    """``flops_per_token`` / ``state_bytes_per_token`` (theoretical, ``harness.bench.costs``) and
    ``x_flops``: the row's theoretical FLOPs over the baseline's for the same pass, beside ``x_base``.

    The cost is per token and depends on the candidate and ``d_model`` only, so each candidate is
    built once at each ``d_model`` (float32, no data) to read it."""
    cache: dict[tuple[str, int], Any] = {}

    def cost(name: str, d_model: int):
        if (name, d_model) not in cache:
            try:
                cache[(name, d_model)] = costs.token_cost(get_candidate(name).build(d_model))
            except Exception:  # a candidate that cannot be built has no declared cost
                cache[(name, d_model)] = None
        return cache[(name, d_model)]

    for r in rows:
        c = cost(r["candidate"], r["d_model"])
        r["flops_per_token"] = None if c is None else c.flops(r["pass"])
        r["state_bytes_per_token"] = None if c is None else c.bytes(r["pass"])
        b = cost(baseline, r["d_model"]) if baseline else None
        ok = c is not None and b is not None and b.flops(r["pass"]) > 0
        r["x_flops"] = c.flops(r["pass"]) / b.flops(r["pass"]) if ok else None
