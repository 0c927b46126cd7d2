"""pytest-benchmark timings of key kernels and candidates (marked ``benchmark``).

The project's pytest config passes ``--benchmark-disable``, so in a plain ``pytest`` run (and in CI)
each benchmark body runs once as an ordinary test: shapes are small and every result is checked
against its reference. To time them locally, and compare before / after a change::

    pytest tests/benchmarks --benchmark-enable --benchmark-autosave          # saves .benchmarks/...
    # ... edit a kernel ...
    pytest tests/benchmarks --benchmark-enable --benchmark-compare           # against the last save
    pytest tests/benchmarks --benchmark-enable --benchmark-compare=0001 --benchmark-compare-fail=median:10%

``-m "not benchmark"`` skips them; ``-m benchmark`` runs only them. Threads are pinned to 1 and the
clock is the project's (``harness.timing.benchmark_clock``: the thread's CPU time), so numbers on a
shared machine are comparable between runs and with the other timers of the harness.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness import get_candidate, timing
from harness.bench.algorithms import resolvent as rv
from harness.bench.algorithms import scan_algorithms as sa
from harness.bench.algorithms import wy_vs_ssd as wy
from harness.kernels import linear_attn

pytestmark = pytest.mark.benchmark(timer=timing.benchmark_clock(torch.device("cpu")))


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    a, b = a.to(wide), b.to(wide)
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("impl", ["cyclic_reduction", "hillis_steele", "blelloch", "chunkwise"])
def test_dense_scan(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    A = 0.9 * torch.randn(1, 256, 1, 16, 16, generator=g) / 4
    b = torch.randn(1, 256, 1, 16, generator=g)
    h, _ = benchmark(sa.dense_linear_scan, A, b, impl=impl)
    ref, _ = sa.scan_sequential(A.double(), b.double())
    assert _rel(h, ref) < 1e-5


@pytest.mark.parametrize("impl,k", [("woodbury", 0), ("neumann", 8)])
def test_dplr_resolvent(benchmark, impl, k):
    lam, P, Q = rv.hippo_legs_dplr(32, torch.complex64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 1, 32, generator=g).to(torch.complex64)
    delta = torch.full((1, 256, 1), 1e-3)
    y, _ = benchmark(rv.dplr_resolvent, lam[None], P[None], Q[None], delta, x, impl=impl, k=k)
    ref, _ = rv.dplr_resolvent(lam[None], P[None], Q[None], delta, x, impl="dense")
    assert _rel(y, ref) < 1e-4


@pytest.mark.parametrize("impl", ["naive_wy", "block_ssd"])
def test_deltanet_chunk(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 256, 2, 32, generator=g) / math.sqrt(32)
    k = F.normalize(torch.randn(1, 256, 2, 32, generator=g), dim=-1)
    v = torch.randn(1, 256, 2, 32, generator=g)
    beta = torch.rand(1, 256, 2, generator=g)
    o, _ = benchmark(wy.delta_rule_chunk, q, k, v, beta, impl=impl, chunk_size=64)
    ref, _ = wy.delta_rule_chunk(q.double(), k.double(), v.double(), beta.double(), impl="sequential")
    assert _rel(o, ref) < 1e-5


def test_linear_attention_chunk(benchmark):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, 512, 4, 16, generator=g) for _ in range(3))
    o, _ = benchmark(linear_attn.linear_attention, q, k, v, impl="chunk")
    ref, _ = linear_attn.linear_attention(q.double(), k.double(), v.double(), impl="recurrent")
    assert _rel(o, ref) < 1e-5


@pytest.mark.parametrize("name", ["softmax", "linear-attention"])
def test_candidate_fwd_bwd(benchmark, name):
    torch.manual_seed(0)
    m = get_candidate(name).build(64)
    x = torch.randn(1, 512, 64, requires_grad=True)

    def step():
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x).square().mean().backward()

    benchmark(step)
    assert x.grad is not None and torch.isfinite(x.grad).all()
