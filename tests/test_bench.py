"""The microbenchmarks (harness.bench): timing stats, exponent fit, skipped rows, records, numerics, CLI.

Tiny shapes only; no assertion on wall-time values (the machine is shared), only on their sanity.
Temporary candidates are registered inside fixtures (after collection, so the conformance suite never
sees them) and removed afterwards.
"""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from harness import Mixer, get_candidate, register_candidate
from harness import registry as reg
from harness.bench import common, report, throughput
from harness.bench.cli import main as bench_main
from harness.bench.measure import count_flops, fit_exponent, peak_memory_bytes, peak_tflops
from harness.bench.numerics import NumericsConfig, nan_fill_uninitialized, run_numerics
from harness.bench.scans import ScansConfig, run_scans
from harness.bench.throughput import ThroughputConfig, run_throughput, spread_rounds
from harness.results import RecordStore
from harness.timing import (
    check_clock,
    fastest,
    runs_on_calling_thread,
    speed_probe,
    stats_from,
    time_cpu,
    time_probe,
)

TINY = dict(d_model=32, batch=1, min_run_time=0.01, min_samples=3, progress=False)


# -- temporary candidates ----------------------------------------------------------------------------


class _Scale(Mixer):
    """y_t = w * x_t, with optional sleeping (time ~ T) and a failure at a given T."""

    def __init__(self, d_model: int, sleep_per_token: float = 0.0, fail_at: int = 0) -> None:
        super().__init__(d_model)
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, d_model))
        self.sleep_per_token, self.fail_at = sleep_per_token, fail_at

    def forward(self, x: Tensor) -> Tensor:
        if self.fail_at and x.shape[1] >= self.fail_at:
            raise RuntimeError(f"deliberate failure at T={x.shape[1]}")
        if self.sleep_per_token:
            time.sleep(self.sleep_per_token * x.shape[1])
        return x * self.w

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, 1, device=device, dtype=dtype)

    def step(self, x_t, state):
        return x_t * self.w, state + 1


class _CudaOnly(_Scale):
    needs_cuda = True


class _Fp32Only(_Scale):
    supported_dtypes = (torch.float32, torch.float64)


class _HalfWritten(_Scale):
    """An extra implementation that allocates its output with torch.empty and writes only half of it."""

    def implementations(self):
        def half_written(x: Tensor) -> Tensor:
            out = torch.empty_like(x)
            half = x.shape[1] // 2
            out[:, :half] = x[:, :half] * self.w
            return out

        return {**super().implementations(), "half_written": half_written}


FAKES = {
    "_bench-sleepy": (_Scale, {"sleep_per_token": 2e-4}),
    "_bench-failing": (_Scale, {"fail_at": 32}),
    "_bench-cuda-only": (_CudaOnly, {}),
    "_bench-fp32-only": (_Fp32Only, {}),
    "_bench-half-written": (_HalfWritten, {}),
}


@pytest.fixture
def fakes():
    for name, (cls, preset) in FAKES.items():
        register_candidate(name, groups=("_bench-test",), **preset)(cls)
    yield list(FAKES)
    for name in FAKES:
        reg._CANDIDATES.pop(name, None)


# -- timing primitives ----------------------------------------------------------------------------------


def test_stats_and_cpu_timer_are_sane():
    s = stats_from([3.0, 1.0, 2.0, 5.0, 4.0], "test")
    assert (s.p20, s.median, s.p80, s.n) == (pytest.approx(1.8), 3.0, pytest.approx(4.2), 5)
    x = torch.randn(64, 64)
    st = time_cpu(lambda: x @ x, threads=1, call_estimate=1e-5, min_run_time=0.01, min_samples=4)
    assert st.n >= 4 and 0 < st.p20 <= st.median <= st.p80 < 1.0


def test_cpu_timer_samples_are_public_timer_calls_with_their_own_warm_up():
    """A one-call sample is ``blocked_autorange(min_run_time=0)``: one untimed call (its block-size
    estimate) and one timed; a block of several calls is ``timeit``: two untimed calls, then the block.
    The caller does not warm up: every sample is warm."""
    calls = []
    st = time_cpu(lambda: calls.append(1), threads=1, call_estimate=1.0, min_run_time=0.0, min_samples=5)
    assert st.n == 5 and len(calls) == 10 and "blocked_autorange" in st.method
    calls.clear()
    st = time_cpu(lambda: calls.append(1), threads=1, call_estimate=1e-4, min_run_time=0.004, min_samples=4)
    assert "timeit, blocks of 10" in st.method and st.n >= 4 and len(calls) == st.n * (10 + 2)


def test_fastest_is_the_minimum_of_one_call_samples():
    calls = []
    t = fastest(lambda: calls.append(sum(range(2000))), torch.device("cpu"), reps=3)
    assert len(calls) == 6 and 0 < t < 0.1


def test_speed_probe_is_fixed_work_timed_over_a_window():
    a, b = speed_probe(), speed_probe()
    assert torch.equal(a(), b()) and a().shape == (1024, 64)
    calls = []

    def counted():
        calls.append(1)
        return a()

    t = time_probe(counted, "cpu", window=0.0)
    assert len(calls) == 6 and 0 < t < 1.0  # one warm-up call, then at least five timed


def test_pool_divides_each_rounds_samples_by_that_rounds_probe():
    pool = throughput._Pool([], [], [], "")
    pool.add([2.0, 4.0], 2.0, "m")  # a slow moment: the probe took 2 s
    pool.add([3.0], 1.0, "m")
    f = pool.fields(tokens_per_call=6)
    assert f["median_s"] == 3.0 and f["tokens_per_s"] == 2.0 and f["n_samples"] == 3
    assert f["x_probe"] == 2.0  # median of 1, 2, 3
    assert f["probe_s"] == 1.5
    empty = throughput._Pool([], [], [], "")
    empty.add([1.0], None, "m")  # no probe (CUDA): no probe-relative time
    assert empty.fields(1)["x_probe"] is None


def test_clocks():
    x = torch.randn(64, 64)
    st = time_cpu(lambda: x @ x, threads=1, call_estimate=1e-5, min_run_time=0.01, min_samples=4, clock="cpu")
    assert "thread_time" in st.method and 0 < st.p20 <= st.median <= st.p80 < 1.0
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert runs_on_calling_thread(lambda: x @ x)[0]
    finally:
        torch.set_num_threads(prev)

    def elsewhere():  # the work happens on another thread: thread CPU time would not see it
        t = threading.Thread(target=lambda: sum(i * i for i in range(300_000)))
        t.start()
        t.join()

    assert not runs_on_calling_thread(elsewhere)[0]
    assert check_clock("cpu", torch.device("cpu"), 1) == "cpu"
    with pytest.raises(ValueError, match="1 thread"):
        check_clock("cpu", torch.device("cpu"), 2)
    with pytest.raises(ValueError, match="unknown clock"):
        check_clock("tsc", torch.device("cpu"), 1)


def test_flop_count_and_peak_table():
    a = torch.randn(32, 48)
    b = torch.randn(48, 16)
    assert count_flops(lambda: a @ b) == 2 * 32 * 48 * 16
    assert peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == (989.4, "H100/bfloat16")
    assert peak_tflops("NVIDIA H100 PCIe", torch.float32)[0] == 51.2
    assert peak_tflops("NVIDIA H200", torch.float16)[0] == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB", torch.float32)[0] == 19.5
    assert peak_tflops("AMD EPYC", torch.float32) == (None, None)


def test_exponent_fit_on_synthetic_times():
    T = np.array([256, 1024, 4096, 8192])
    rng = np.random.default_rng(0)
    noise = np.exp(rng.normal(0, 0.02, size=T.size))
    assert fit_exponent(T, 3e-9 * T**2 * noise) == pytest.approx(2.0, abs=0.05)
    assert fit_exponent(T, 1e-6 * T * noise) == pytest.approx(1.0, abs=0.05)
    assert fit_exponent(T, np.full(T.size, 1e-3)) == pytest.approx(0.0, abs=1e-9)
    assert fit_exponent([1024], [0.1]) is None
    assert fit_exponent([1024, 1024], [0.1, 0.2]) is None


def test_cpu_peak_memory_sees_a_large_allocation():
    def alloc():
        t = torch.ones(16 * 2**20 // 4 * 4)  # 64 MiB, touched
        return t.sum()

    peak, method, seconds = peak_memory_bytes(alloc, torch.device("cpu"))
    if peak is None:
        pytest.skip(f"peak memory unavailable here: {method}")
    assert 60 * 2**20 <= peak < 1024 * 2**20, (peak, method)
    assert 0 < seconds < 60


# -- throughput ---------------------------------------------------------------------------------------


def test_throughput_softmax_and_linear_attention(tmp_path):
    cfg = ThroughputConfig(seq_lens=(16, 64), **TINY)
    rows = run_throughput(["linear-attention"], cfg, RecordStore(tmp_path))
    assert {r["candidate"] for r in rows} == {"softmax", "linear-attention"}  # baseline added
    assert {r["pass"] for r in rows} == {"fwd", "fwd_bwd", "step"}
    for r in rows:
        assert r["status"] == "ok", r
        assert 0 < r["p20_s"] <= r["median_s"] <= r["p80_s"]
        assert r["n_samples"] >= 3
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_call"] / r["median_s"])
        assert r["x_probe"] > 0 and r["probe_s"] > 0
        assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
        assert r["exponent"] is not None and math.isfinite(r["exponent"])
        assert r["x_base"] is not None and r["x_base"] > 0
        assert r["threads"] == 1 and r["session"] and r["clock"] == "cpu"
    assert all(r["x_base"] == 1.0 for r in rows if r["candidate"] == "softmax")
    # decode: the KV cache is grown to each T; a constant-size state is not stepped past the first T
    held = {(r["candidate"], r["seq_len"]): r["state_tokens"] for r in rows if r["pass"] == "step"}
    assert held == {
        ("softmax", 16): 16,
        ("softmax", 64): 64,
        ("linear-attention", 16): 16,
        ("linear-attention", 64): 16,
    }
    text = report.render(report.throughput_table(rows), "table")
    assert "linear-attention" in text and "fwd_bwd" in text and "exponent" in text


def test_throughput_records_written_and_reused(tmp_path):
    store = RecordStore(tmp_path)
    cfg = ThroughputConfig(seq_lens=(16, 32), passes=("fwd",), baseline=None, **TINY)
    first = run_throughput(["linear-attention"], cfg, store)
    files = sorted((tmp_path / "runs" / "throughput").glob("*.json"))
    assert len(files) == 2 and not any(r["reused"] for r in first)
    rec = json.loads(files[0].read_text())
    assert rec["kind"] == "throughput" and rec["environment"]["torch"] == torch.__version__
    assert {
        "candidate",
        "hparams",
        "source_hash",
        "seq_len",
        "dtype",
        "impl",
        "device_name",
        "threads",
    } <= set(rec["identity"])
    again = run_throughput(["linear-attention"], cfg, store)
    assert all(r["reused"] for r in again)
    assert [r["median_s"] for r in again] == [r["median_s"] for r in first]
    cfg.force = True
    forced = run_throughput(["linear-attention"], cfg, store)
    assert not any(r["reused"] for r in forced)


def test_rounds_pool_samples_taken_minutes_apart(tmp_path):
    """Each later round re-times every measured row and the stored record holds the pooled numbers;
    the decode step of a growing KV cache exists only in the first round and is not re-timed."""
    store = RecordStore(tmp_path)
    cfg = ThroughputConfig(seq_lens=(16, 32), **{**TINY, "rounds": 3, "min_samples": 3})
    rows = run_throughput(["linear-attention"], cfg, store)
    for r in rows:
        growing = r["candidate"] == "softmax" and r["pass"] == "step"
        assert r["rounds_timed"] == (1 if growing else 3), r
        assert r["n_samples"] >= r["rounds_timed"]
        assert 0 < r["p20_s"] <= r["median_s"] <= r["p80_s"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_call"] / r["median_s"])
        stored = store.get("throughput", r["run_id"])["result"]
        assert stored["median_s"] == r["median_s"] and stored["n_samples"] == r["n_samples"]
        assert "_samples" not in stored and "run_id" not in stored
    with pytest.raises(ValueError, match="rounds"):
        ThroughputConfig(rounds=0).resolved()


def test_spread_rounds_cover_the_whole_run():
    assert spread_rounds(6, 24) == [0, 4, 8, 12, 16, 20]
    assert spread_rounds(24, 24) == list(range(24))
    assert spread_rounds(1, 24) == [0]
    assert spread_rounds(9, 4) == [0, 1, 2, 3]
    for n in range(1, 30):
        r = spread_rounds(n, 24)
        assert len(r) == min(n, 24) and r[0] == 0 and r == sorted(set(r))
        assert r[-1] > 24 - 24 / n - 1  # the last sample comes from the final stretch of the run


def test_a_slow_row_is_timed_in_min_samples_rounds_spread_over_the_run(tmp_path):
    """A row whose call outlasts its share of ``min_run_time`` is timed in ``min_samples`` rounds
    (one call each), not all of them; its record is saved complete after its last round."""
    store = RecordStore(tmp_path)
    cfg = ThroughputConfig(
        seq_lens=(16,), passes=("fwd",), baseline=None, **{**TINY, "min_run_time": 1e-9, "rounds": 6}
    )
    (row,) = run_throughput(["linear-attention"], cfg, store)
    assert row["rounds_planned"] == 3 and row["rounds_timed"] == 3 and row["n_samples"] == 3
    assert store.get("throughput", row["run_id"])["result"]["complete"] is True


def test_a_run_stopped_between_rounds_is_measured_again(tmp_path, monkeypatch):
    """Rows are saved after their first round, marked incomplete; a rerun measures those again
    rather than reusing a first-round-only median, and saves them complete."""
    store = RecordStore(tmp_path)
    cfg = ThroughputConfig(seq_lens=(16,), passes=("fwd",), baseline=None, **{**TINY, "rounds": 3})

    def interrupted(self, round_index, bar):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(throughput._CandidateRunner, "retime_round", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_throughput(["linear-attention"], cfg, store)
    (path,) = (tmp_path / "runs" / "throughput").glob("*.json")
    assert json.loads(path.read_text())["result"]["complete"] is False
    (row,) = run_throughput(["linear-attention"], cfg, store)
    assert not row["reused"] and row["rounds_timed"] == 3
    assert json.loads(path.read_text())["result"]["complete"] is True
    (again,) = run_throughput(["linear-attention"], cfg, store)
    assert again["reused"]


def test_baseline_remeasured_when_anything_else_is(tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    cfg = ThroughputConfig(seq_lens=(16,), passes=("fwd",), **TINY)
    monkeypatch.setattr(common, "SESSION", "earlier-process")
    run_throughput(["linear-attention"], cfg, store)
    monkeypatch.setattr(common, "SESSION", "this-process")
    rows = run_throughput(["linear-attention", "diagonal"], cfg, store)
    by = {r["candidate"]: r for r in rows}
    assert by["linear-attention"]["reused"] and not by["diagonal"]["reused"]
    assert not by["softmax"]["reused"]  # re-measured next to the new candidate
    assert by["diagonal"]["x_base"] is not None
    assert by["linear-attention"]["x_base"] is None  # measured in another session than the baseline


def test_skipped_rows_carry_reasons(fakes):
    cfg = ThroughputConfig(  # wall clock: the sleepy candidate's time is sleep, which CPU time ignores
        seq_lens=(8, 32, 4096),
        dtypes=("float32", "bfloat16"),
        time_cap=0.05,
        baseline=None,
        clock="wall",
        **TINY,
    )
    rows = run_throughput(["_bench-sleepy", "_bench-failing", "_bench-cuda-only", "_bench-fp32-only"], cfg)

    def pick(name, **kw):
        return [r for r in rows if r["candidate"] == name and all(r[k] == v for k, v in kw.items())]

    assert all(r["status"] == "skipped" and r["reason"] == "needs CUDA" for r in pick("_bench-cuda-only"))
    assert len(pick("_bench-cuda-only")) == 2 * 3 * 3  # dtypes x passes x T: none dropped
    bf16 = pick("_bench-fp32-only", dtype="bfloat16")
    assert bf16 and all(r["status"] == "skipped" and "supported_dtypes" in r["reason"] for r in bf16)
    assert all(r["status"] == "ok" for r in pick("_bench-fp32-only", dtype="float32"))
    # sleepy: 2e-4 s per token -> T=4096 predicted ~0.8 s > cap 0.05 s: skipped without running it
    long = pick("_bench-sleepy", dtype="float32", seq_len=4096, **{"pass": "fwd"})
    assert long[0]["status"] == "skipped" and "predicted" in long[0]["reason"], long
    assert pick("_bench-sleepy", dtype="float32", seq_len=8, **{"pass": "fwd"})[0]["status"] == "ok"
    fail = pick("_bench-failing", dtype="float32", seq_len=32, **{"pass": "fwd"})[0]
    assert fail["status"] == "error" and "deliberate failure" in fail["reason"]
    table = report.throughput_table(rows)
    assert table["note"].str.contains("needs CUDA").any() and table["note"].str.contains("time cap").any()


def test_time_cap_on_a_measured_call(fakes):
    """Skipped when both untimed calls exceed the cap; hopeless (10x the cap) after the first."""
    kw = dict(seq_lens=(64,), passes=("fwd",), baseline=None, clock="wall", **TINY)
    (row,) = run_throughput(["_bench-sleepy"], ThroughputConfig(time_cap=0.005, **kw))  # sleeps ~13 ms
    assert row["status"] == "skipped" and "time cap 0.005 s: both untimed calls took longer" in row["reason"]
    (row,) = run_throughput(["_bench-sleepy"], ThroughputConfig(time_cap=0.001, **kw))
    assert row["status"] == "skipped" and "the first call took" in row["reason"]
    (row,) = run_throughput(["_bench-sleepy"], ThroughputConfig(time_cap=0.5, **kw))
    assert row["status"] == "ok"


# -- numerics ------------------------------------------------------------------------------------------


def test_numerics_float64_near_zero_and_bf16_positive(tmp_path):
    cfg = NumericsConfig(
        dtypes=("float64", "bfloat16"),
        seq_lens=(16, 48),
        batch=1,
        d_model=32,
        stability_len=256,
        stability_dtypes=("bfloat16",),
        progress=False,
    )
    rows = run_numerics(["linear-attention"], cfg, RecordStore(tmp_path))
    err = [r for r in rows if r["check"] == "error"]
    assert {(r["impl"], r["dtype"], r["seq_len"]) for r in err} == {
        (i, d, t) for i in ("parallel", "recurrent") for d in ("float64", "bfloat16") for t in (16, 48)
    }
    for r in err:
        assert r["status"] == "ok" and r["finite"], r
        if r["dtype"] == "float64":
            assert r["out_rms"] < 1e-12 and r["grad_rms"] < 1e-12 and r["out_max_abs"] < 1e-12
        else:
            assert 1e-5 < r["out_rms"] < 0.1 and 1e-5 < r["grad_rms"] < 0.1
        if r["impl"] == "recurrent":
            assert r["state_err"] is not None and (r["state_err"] < 1e-12) == (r["dtype"] == "float64")
        else:
            assert r["state_err"] is None
    (stab,) = [r for r in rows if r["check"] == "stability"]
    assert stab["stable"] and stab["out_finite"] and stab["state_steps"] == 256
    assert 1.0 < stab["state_growth"] < 10  # linear attention's sum grows ~4x from T/4 to T
    assert all(r["stable_long"] is (True if r["dtype"] == "bfloat16" else None) for r in err)
    again = run_numerics(["linear-attention"], cfg, RecordStore(tmp_path))
    assert all(r["reused"] for r in again)
    text = report.render(report.numerics_table(rows), "markdown")
    assert "out rms ratio" in text and "| linear-attention" in text


def test_nan_filled_allocations_catch_half_written_outputs(fakes):
    with nan_fill_uninitialized():
        assert torch.isnan(torch.empty(100)).all()
    cfg = NumericsConfig(
        dtypes=("float32",), seq_lens=(8,), batch=1, d_model=8, stability_len=0, progress=False
    )
    rows = run_numerics(["_bench-half-written"], cfg)
    by = {r["impl"]: r for r in rows}
    assert by["parallel"]["finite"] and by["parallel"]["out_rms"] < 1e-6
    assert by["half_written"]["finite"] is False and math.isnan(by["half_written"]["out_rms"])
    assert "NO" in report.numerics_table(rows)["finite"].tolist()


def test_numerics_skips_with_reasons(fakes):
    cfg = NumericsConfig(
        dtypes=("float32", "bfloat16"), seq_lens=(8,), batch=1, d_model=8, stability_len=64, progress=False
    )
    rows = run_numerics(["_bench-cuda-only", "_bench-fp32-only"], cfg)
    cuda = [r for r in rows if r["candidate"] == "_bench-cuda-only"]
    assert cuda and all(r["status"] == "skipped" and r["reason"] == "needs CUDA" for r in cuda)
    fp = [r for r in rows if r["candidate"] == "_bench-fp32-only" and r["dtype"] == "bfloat16"]
    assert fp and all(r["status"] == "skipped" and "supported_dtypes" in r["reason"] for r in fp)


# -- scans, leaderboard columns, CLI -----------------------------------------------------------------------


def test_scans_rows_and_table():
    cfg = ScansConfig(
        seq_lens=(32,), state_sizes=(4,), resolvent_n=8, neumann_ks=(2, 8), deltanet_dim=8, deltanet_heads=1,
        chunk_size=8, min_run_time=0.01, min_samples=3, progress=False,
    )  # fmt: skip
    rows = run_scans(cfg)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    for r in rows:
        if r["dtype"] == "float64" and r["algorithm"] != "neumann":
            assert r["rel_err"] < 1e-12, r
    dense = {r["algorithm"]: r for r in rows if r["family"] == "dense" and r["dtype"] == "float32"}
    assert dense["cyclic_reduction"]["matmat"] == 31 and dense["hillis_steele"]["matmat"] == 129
    assert dense["sequential"]["x_seq"] == 1.0 and dense["hillis_steele"]["x_prefix"] == 1.0
    text = report.render_scans(rows, "table")
    assert "cyclic_reduction" in text and "neumann k=8" in text and "block_ssd" in text
    assert text.startswith("dense\n") and "\nresolvent\n" in text and "nan" not in text


def test_bench_columns_from_records(tmp_path):
    store = RecordStore(tmp_path)
    tcfg = ThroughputConfig(seq_lens=(16, 64), passes=("fwd_bwd",), **TINY)
    run_throughput(["linear-attention"], tcfg, store)
    ncfg = NumericsConfig(
        dtypes=("bfloat16",), seq_lens=(16,), batch=1, d_model=32, stability_len=0, progress=False
    )
    run_numerics(["linear-attention"], ncfg, store)
    df = report.bench_columns(store, ["linear-attention", "softmax", "diagonal"], ref_shape=(1, 64, 32))
    assert list(df.columns) == ["fwd_bwd_tok_s", "time_exponent", "bf16_err"]
    assert df.loc["linear-attention", "fwd_bwd_tok_s"] > 0
    assert math.isfinite(df.loc["softmax", "time_exponent"])
    assert 0 < df.loc["linear-attention", "bf16_err"] < 0.1
    assert math.isnan(df.loc["softmax", "bf16_err"]) and df.loc["diagonal"].isna().all()


def test_cli_throughput_and_unknown_names(tmp_path, capsys):
    args = ["--seq-lens", "16,32", "--d-model", "32", "--results-dir", str(tmp_path), "--quiet"]
    code = bench_main(["throughput", "--candidate", "linear-attention", *args, "--passes", "fwd",
                       "--min-run-time", "0.01", "--format", "csv"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0 and out.out.startswith("candidate,pass,impl") and "linear-attention" in out.out
    assert "throughput:" in out.err and "reused" in out.err
    assert bench_main(["bench", "throughput", "--candidates", "lineer-attention", *args]) == 2
    err = capsys.readouterr().err
    assert "unknown candidate 'lineer-attention'" in err and "did you mean 'linear-attention'" in err
    assert bench_main(["numerics", "--group", "transitons", *args]) == 2
    assert "did you mean 'transitions'" in capsys.readouterr().err


# -- theoretical cost ---------------------------------------------------------------------------------


def test_token_cost_counts_projections_and_declared_algebra():
    from harness.bench.costs import linear_flops, token_cost
    from harness.kernels.cost import TokenCost

    diag = get_candidate("diagonal").build(64)
    dense = get_candidate("dense").build(64)
    c_diag, c_dense = token_cost(diag), token_cost(dense)
    assert isinstance(c_diag, TokenCost) and c_diag.fwd_flops > linear_flops(diag)
    assert c_dense.fwd_flops > c_diag.fwd_flops  # O(N^2 P) scan against O(N P)
    assert c_dense.fwd_bwd_flops == pytest.approx(3 * c_dense.fwd_flops)
    # the straight-through estimator's dense gradient makes pd-ssm's backward dearer than 3x forward
    pd = token_cost(get_candidate("pd-ssm").build(64))
    assert pd.fwd_bwd_flops > 3 * pd.fwd_flops
    assert token_cost(get_candidate("softmax").build(64)) is None  # declares nothing: no x flops


def test_throughput_reports_x_flops_beside_x_base(tmp_path):
    cfg = ThroughputConfig(seq_lens=(16,), passes=("fwd", "fwd_bwd"), baseline="diagonal", **TINY)
    rows = run_throughput(["dense"], cfg, RecordStore(tmp_path))
    by = {(r["candidate"], r["pass"]): r for r in rows}
    assert by[("diagonal", "fwd")]["x_flops"] == 1.0
    assert by[("dense", "fwd")]["x_flops"] > 1.0 and by[("dense", "fwd")]["flops_per_token"] > 0
    assert by[("dense", "fwd_bwd")]["flops_per_token"] > by[("dense", "fwd")]["flops_per_token"]
    table = report.throughput_table(rows)
    assert list(table.columns).index("x flops") == list(table.columns).index("x base") + 1
