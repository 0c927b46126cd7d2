"""Throughput of every registered candidate: forward, forward+backward, peak memory.

One class per registered candidate (asv name ``bench_mixers.<candidate>.<benchmark>``, the
candidate name with non-identifier characters replaced by ``_``), each over T in {256, 1024} at
d_model 64, batch 1, float32, on CUDA when available (``HARNESS_ASV_DEVICE`` overrides), else on
CPU with one thread, timed in the thread's CPU time (``_common.synced_timer``, from
``harness.timing``). Candidates that need CUDA are skipped on CPU. ``setup`` builds the mixer and
runs one forward+backward, so even a ``--quick`` run (one sample) times a warmed-up call.

Sampling (asv's own, set here so its cost is stated): each time benchmark runs in ``rounds = 2``
fresh processes per parameter, each taking 3-5 samples after ``warmup_time`` (at most 4 s of
sampling a round), so a result holds 6-10 samples, enough for the judge's Mann-Whitney U test
(``harness.gate.verdicts``; 5 a side is the least that can reach p < 0.01). Time budget: the cost is
mostly starting processes (asv's ``spawn``: each imports torch and the registry, 1.5-2 s of CPU).
Measured on the 2-core CPU machine class: 26 s of CPU per candidate (softmax, diagonal; 16 s with
``--quick``), so the CPU suite of 33 candidates plus the three quality runs records in about 15-20
minutes on an idle machine; ``harness history record --bench REGEX`` records a part.

``peakmem_forward`` is asv's measure: the benchmark process's peak resident memory (it includes the
interpreter and torch, so differences between candidates and commits are what it shows; on CUDA it
counts host memory only).
"""

from __future__ import annotations

import re

import torch

from harness.registry import candidate_names, get_candidate

from ._common import device, prepare, synced_timer

VERSION = "1"
SEQ_LENS = [256, 1024]
D_MODEL = 64
BATCH = 1


class _MixerBenchmark:
    """Template: the generated subclasses set ``candidate``."""

    candidate = ""
    params = [SEQ_LENS]
    param_names = ["T"]
    version = VERSION
    timer = staticmethod(synced_timer)
    timeout = 300
    rounds = 2
    repeat = [3, 5, 4.0]  # (min, max) samples per round, stopping after 4 s once the min is reached
    warmup_time = 0.1

    def setup(self, T: int) -> None:
        spec = get_candidate(self.candidate)
        dev = device()
        if spec.needs_cuda and dev.type != "cuda":
            raise NotImplementedError(f"{self.candidate} needs CUDA")
        prepare(dev)
        torch.manual_seed(0)
        self.model = spec.build(D_MODEL).to(dev)
        self.x = torch.randn(BATCH, T, D_MODEL, device=dev)
        self.x_grad = self.x.clone().requires_grad_(True)
        self.g = torch.randn(BATCH, T, D_MODEL, device=dev)
        self._forward_backward()  # warm-up: lazy initialisation, allocator, kernel caches

    def _forward_backward(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.x_grad.grad = None
        self.model(self.x_grad).backward(self.g)

    def time_forward(self, T: int) -> None:
        with torch.no_grad():
            self.model(self.x)

    def time_forward_backward(self, T: int) -> None:
        self._forward_backward()

    def peakmem_forward(self, T: int) -> None:
        with torch.no_grad():
            self.model(self.x)


def _class_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name)
    if not base or base[0].isdigit() or base.startswith("_"):
        base = "c_" + base
    out, i = base, 2
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def _generate() -> dict[str, type]:
    taken: set[str] = set()
    classes = {}
    for name in candidate_names():
        cls_name = _class_name(name, taken)
        classes[cls_name] = type(
            cls_name,
            (_MixerBenchmark,),
            {"candidate": name, "__doc__": f"Throughput of candidate {name!r}.", "__module__": __name__},
        )
    return classes


globals().update(_generate())
