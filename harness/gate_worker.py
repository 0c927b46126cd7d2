"""The measuring side of ``harness gate``: speed samples as ratios to a reference op, quality runs.

It runs in the gate's own process (against a committed baseline) or as a subprocess serving
JSON-line requests (``serve``), once per side of an A/B comparison: the A/B gate runs this file of
the *current* tree with the *base* commit's packages first on PYTHONPATH, so it must work with older
versions of the engine. It therefore uses only the long-standing API — the registry's
``get_candidate(name).build(d_model)`` / ``needs_cuda`` and ``harness.train``'s
``RunSpec`` / ``resolve`` / ``execute`` — and imports no newer module of the package; the timing
module, a leaf, is this tree's, loaded by path.

Speed: a sample of a candidate is (fastest of ``reps`` forward+backward calls) / (fastest of ``reps``
calls of the reference op), the reference timed just before the candidate in the same process, so
a machine that is slower or busier for a while scales both. The calls are timed by
``harness.timing.fastest`` (thread CPU time with one thread; CUDA events on CUDA) of *this* tree,
loaded by path, so both sides of an A/B comparison are timed by the same code. The reference op is a fixed
two-layer GELU MLP (matmuls and elementwise work, like a mixer) at the same ``[B, T, D]``.

Fault injection (for the gate's own tests; never set otherwise):
- ``HARNESS_GATE_INJECT_SLOWDOWN="name=1.5[,name2=2]"``: the named candidate's forward and backward
  each do extra busy work for (factor - 1) x their own measured time;
- ``HARNESS_GATE_INJECT_LR_SCALE="name=0"``: the named candidate's quality runs use the learning
  rate times this scale (0: the model never trains, accuracy drops to its initial level).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _this_tree(module: str):
    """A leaf module of this file's tree (``harness/<module>.py``), loaded by path: in the A/B form
    ``harness`` is the base commit's, but both sides must be timed by the same code."""
    name = f"_gate_this_tree_{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{module}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before running it: dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


timing = _this_tree("timing")

INJECT_SLOWDOWN_ENV = "HARNESS_GATE_INJECT_SLOWDOWN"
INJECT_LR_SCALE_ENV = "HARNESS_GATE_INJECT_LR_SCALE"


def parse_injection(text: str | None) -> dict[str, float]:
    """``"a=1.5,b=2"`` -> {"a": 1.5, "b": 2.0}; malformed entries are errors."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"fault injection expects name=factor, got {item!r}")
        out[name.strip()] = float(value)
    return out


# -- fault injection: a slowed mixer --------------------------------------------------------------
def _clock(t: torch.Tensor) -> float:
    """The gate's clock for this tensor's device (see :func:`_fastest`), synchronised on CUDA."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
        return time.perf_counter()
    return time.process_time()


def _spin(seconds: float, t: torch.Tensor) -> None:
    """Busy work for ``seconds`` of the clock that measures ``t``'s device."""
    clock = time.perf_counter if t.is_cuda else time.process_time
    end = clock() + seconds
    while clock() < end:
        pass


class _Exit(torch.autograd.Function):
    """Identity on the mixer's output; in backward, notes when the mixer's backward starts."""

    @staticmethod
    def forward(ctx, y, clock: dict):
        ctx.clock = clock
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        ctx.clock["backward_start"] = _clock(g)
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
            _spin(ctx.extra * (_clock(g) - start), g)
        return g, None, None


class SlowedMixer(nn.Module):
    """``inner`` whose forward and backward take ``factor`` x as long (busy work, for tests)."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.extra = max(0.0, float(factor) - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clock: dict[str, float] = {}
        if x.requires_grad:
            x = _Enter.apply(x, clock, self.extra)
        t0 = _clock(x)
        y = self.inner(x)
        _spin(self.extra * (_clock(y) - t0), y)
        return _Exit.apply(y, clock) if y.requires_grad else y


# -- speed --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeedSettings:
    batch: int = 8
    seq_len: int = 128
    d_model: int = 64
    reps: int = 3  # calls per measurement; the fastest counts
    device: str = "cpu"
    threads: int = 1  # CPU threads (single: stable on a shared machine, like training)
    # bump when the measurement changes (old baselines are then not comparable); 2: harness.timing
    method: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReferenceOp(nn.Module):
    """The fixed yardstick: a two-layer GELU MLP, d -> 4d -> d."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _fwd_bwd(model: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).backward(g)

    return call


@dataclass
class SpeedSession:
    """Built candidates and the reference op, ready to take interleaved samples."""

    names: list[str]
    settings: SpeedSettings
    slowdown: dict[str, float] = field(default_factory=dict)
    calls: dict[str, Callable[[], None]] = field(init=False, default_factory=dict)
    errors: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        from harness.registry import get_candidate

        s = self.settings
        self.device = torch.device(s.device)
        if self.device.type == "cpu":
            torch.set_num_threads(s.threads)
        gen = torch.Generator().manual_seed(0)
        shape = (s.batch, s.seq_len, s.d_model)
        x = torch.randn(shape, generator=gen).to(self.device).requires_grad_(True)
        g = torch.randn(shape, generator=gen).to(self.device)
        torch.manual_seed(0)
        self.reference = _fwd_bwd(ReferenceOp(s.d_model).to(self.device), x, g)
        for name in self.names:
            try:
                spec = get_candidate(name)
                if spec.needs_cuda and self.device.type != "cuda":
                    raise RuntimeError(f"{name} needs CUDA")
                torch.manual_seed(0)
                model: nn.Module = spec.build(s.d_model).to(self.device)
                if name in self.slowdown:
                    model = SlowedMixer(model, self.slowdown[name])
                call = _fwd_bwd(model, x, g)
                call()  # warm-up, and a candidate that fails is an error here, not mid-sampling
                call()
                self.calls[name] = call
            except Exception as e:  # a broken candidate is a gate finding, not a crash
                self.errors[name] = f"{type(e).__name__}: {e}"
        for _ in range(2):
            self.reference()

    def sample(self, rotation: int = 0) -> dict[str, dict[str, float]]:
        """One round: for each candidate (order rotated by ``rotation``), reference then candidate."""
        names = list(self.calls)
        if names:
            k = rotation % len(names)
            names = names[k:] + names[:k]
        out = {}
        for name in names:
            ref = timing.fastest(self.reference, self.device, self.settings.reps, self.settings.threads)
            t = timing.fastest(self.calls[name], self.device, self.settings.reps, self.settings.threads)
            out[name] = {"ratio": t / ref, "seconds": t, "reference_seconds": ref}
        return out


# -- quality ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QualitySettings:
    tier: str = "smoke"
    steps: int = 300
    batch_size: int = 32
    n_valid: int = 64
    n_test: int = 512
    eval_batch: int = 256
    seed: int = 0

    def train_overrides(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "n_valid": self.n_valid,
            "n_test": self.n_test,
            "eval_batch": self.eval_batch,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_run(
    candidate: str, task: str, settings: QualitySettings, lr_scale: float = 1.0
) -> dict[str, Any]:
    """One deterministic training run (single-threaded CPU): accuracies, or the error."""
    from harness.train import RunSpec, execute, resolve

    t0 = time.perf_counter()
    try:
        spec = RunSpec(
            candidate, task, settings.tier, seed=settings.seed, train_overrides=settings.train_overrides()
        )
        run = resolve(spec)
        if lr_scale != 1.0:
            run = resolve(
                RunSpec(
                    candidate,
                    task,
                    settings.tier,
                    seed=settings.seed,
                    lr=run.lr * lr_scale,
                    train_overrides=settings.train_overrides(),
                )
            )
        rec = execute(run)
    except Exception as e:
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    out: dict[str, Any] = {"status": rec["status"], "seconds": time.perf_counter() - t0}
    if rec["status"] == "ok":
        out["token_acc"] = rec["test"]["token_acc"]
        out["seq_acc"] = rec["test"]["seq_acc"]
    elif rec["status"] == "diverged":
        out["token_acc"] = 0.0
        out["seq_acc"] = 0.0
    else:
        out["error"] = rec.get("error")
    return out


def quality_suite(
    candidates: list[str],
    tasks: list[str],
    settings: QualitySettings,
    lr_scale: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{"candidate/task": result}`` for every pair, run one after another."""
    lr_scale = lr_scale or {}
    return {f"{c}/{t}": quality_run(c, t, settings, lr_scale.get(c, 1.0)) for t in tasks for c in candidates}


# -- identity and the JSON-line server ------------------------------------------------------------------
def code_identity() -> dict[str, Any]:
    """Which ``harness`` this process imported (the A/B test checks it is the base's, all of it)."""
    import harness.candidates
    import harness.kernels
    import harness.registry

    commit = None
    try:
        from harness.environment import git_commit

        commit = git_commit()[0]
    except Exception:
        pass
    return {
        "registry_file": os.path.realpath(harness.registry.__file__),
        "candidates_dir": os.path.realpath(os.path.dirname(harness.candidates.__file__)),
        "kernels_dir": os.path.realpath(os.path.dirname(harness.kernels.__file__)),
        "git_commit": commit,
        "torch": torch.__version__,
        "pid": os.getpid(),
    }


def serve(stdin=None, stdout=None) -> None:
    """Answer JSON-line requests until ``quit`` or end of input.

    Requests: ``hello``; ``speed_setup`` (names, settings); ``speed_sample`` (rotation);
    ``quality`` (candidates, tasks, settings). Each answer is one JSON line on the original stdout;
    anything else the code prints goes to stderr, so it cannot corrupt the protocol.
    """
    out = stdout or os.fdopen(os.dup(1), "w", buffering=1)
    if stdout is None:
        os.dup2(2, 1)  # stray prints (from candidates, torch) now go to stderr
        sys.stdout = sys.stderr
    inp = stdin or sys.stdin
    slowdown = parse_injection(os.environ.get(INJECT_SLOWDOWN_ENV))
    lr_scale = parse_injection(os.environ.get(INJECT_LR_SCALE_ENV))
    session: SpeedSession | None = None
    for line in inp:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                break
            if cmd == "hello":
                resp: dict[str, Any] = {"ok": True, **code_identity()}
            elif cmd == "speed_setup":
                session = SpeedSession(req["names"], SpeedSettings(**req["settings"]), slowdown)
                resp = {"ok": True, "errors": session.errors}
            elif cmd == "speed_sample":
                if session is None:
                    raise RuntimeError("speed_sample before speed_setup")
                resp = {"ok": True, "sample": session.sample(int(req.get("rotation", 0)))}
            elif cmd == "quality":
                settings = QualitySettings(**req["settings"])
                resp = {
                    "ok": True,
                    "results": quality_suite(req["candidates"], req["tasks"], settings, lr_scale),
                }
            else:
                raise ValueError(f"unknown request {cmd!r}")
        except Exception as e:
            resp = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=6),
            }
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
