"""Faults for the gate's own tests: a candidate made slower, a candidate made worse.

A fault changes what a registered name builds (like a modifier, through the spec's ``applies``), so
the gate measures the faulty mixer under the real name: ``slow_down`` adds busy work for
``factor - 1`` times the mixer's own forward and backward time, ``mute`` zeroes its output (the
model can no longer move information between tokens). Both keep the mixer's recurrent form.

In the test's own process ``install`` swaps the registry's specs; in the gate's worker subprocesses
``sitecustomize`` (``gate_faults_site/``, put on PYTHONPATH by the test) calls ``install_from_env``,
which injects ``GATE_TEST_FAULTS`` (``"diagonal=slow:1.5,softmax=mute"``) only where ``harness`` is
imported from ``GATE_TEST_FAULTS_TREE``: the current side of an A/B comparison, not the base.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

FAULTS_ENV = "GATE_TEST_FAULTS"
TREE_ENV = "GATE_TEST_FAULTS_TREE"
SITE_DIR = Path(__file__).resolve().parent / "gate_faults_site"


def _now(t: torch.Tensor) -> float:
    """The gate's clock for this tensor's device (``harness.timing``: thread CPU time on CPU)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
        return time.perf_counter()
    return time.thread_time()


def _spin(seconds: float, t: torch.Tensor) -> None:
    end = _now(t) + seconds
    while _now(t) < end:
        pass


class _Exit(torch.autograd.Function):
    """Identity on the mixer's output; in backward, notes when the mixer's backward starts."""

    @staticmethod
    def forward(ctx, y, clock: dict):
        ctx.clock = clock
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        ctx.clock["backward_start"] = _now(g)
        return g, None


class _Enter(torch.autograd.Function):
    """Identity on the mixer's input; in backward (after the mixer's), spins for extra x its time."""

    @staticmethod
    def forward(ctx, x, clock: dict, extra: float):
        ctx.clock, ctx.extra = clock, extra
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        start = ctx.clock.get("backward_start")
        if start is not None:
            _spin(ctx.extra * (_now(g) - start), g)
        return g, None, None


def slow_down(factor: float) -> Callable[[nn.Module], None]:
    """A change to a built mixer: its forward and backward take ``factor`` x as long."""
    extra = max(0.0, float(factor) - 1.0)

    def apply(mixer: nn.Module) -> None:
        calls: list[dict[str, float]] = []

        def before(module, args):
            (x,) = args
            clock = {"forward_start": _now(x)}
            calls.append(clock)
            return (_Enter.apply(x, clock, extra),) if x.requires_grad else None

        def after(module, args, y):
            clock = calls.pop()
            _spin(extra * (_now(y) - clock["forward_start"]), y)
            return _Exit.apply(y, clock) if y.requires_grad else None

        mixer.register_forward_pre_hook(before)
        mixer.register_forward_hook(after)

    return apply


def mute(mixer: nn.Module) -> None:
    """A change to a built mixer: its output is zero."""
    mixer.register_forward_hook(lambda module, args, y: y * 0)


def parse(text: str) -> dict[str, Callable[[nn.Module], None]]:
    """``"a=slow:1.5,b=mute"`` -> the faults by candidate name."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, fault = item.partition("=")
        kind, _, arg = fault.partition(":")
        if kind == "slow":
            out[name] = slow_down(float(arg))
        elif kind == "mute":
            out[name] = mute
        else:
            raise ValueError(f"unknown fault {item!r}: expected name=slow:FACTOR or name=mute")
    return out


def install(faults: dict[str, Callable[[nn.Module], None]], setitem=None) -> None:
    """Make each named candidate build with its fault applied (``setitem``: e.g. pytest's
    ``monkeypatch.setitem``, so the registry is restored after the test)."""
    from harness import registry

    for name, fault in faults.items():
        spec = registry.get_candidate(name)
        faulty = dataclasses.replace(spec, applies=(*spec.applies, fault))
        (setitem or dict.__setitem__)(registry._CANDIDATES, name, faulty)


def install_from_env() -> None:
    text = os.environ.get(FAULTS_ENV)
    if not text:
        return
    import harness.registry

    tree = os.environ.get(TREE_ENV)
    if tree and not Path(harness.registry.__file__).resolve().is_relative_to(Path(tree).resolve()):
        return  # another tree's harness (the A/B gate's base side): measured as it is
    install(parse(text))
