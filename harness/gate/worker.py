"""The measuring side of ``harness gate``: speed samples as ratios to a reference op, quality runs.

It runs in the gate's own process (``measure_here``, against a committed baseline) or as a
subprocess serving JSON-line requests (``serve``), once per side of an A/B comparison
(:mod:`harness.gate.ab`): the A/B gate runs this file of the *current* tree with the *base*
commit's packages first on PYTHONPATH, so it must work with older versions of the engine. It
therefore uses only the long-standing API — the registry's ``get_candidate(name).build(d_model)`` /
``needs_cuda`` and ``harness.train``'s ``RunSpec`` / ``resolve`` / ``execute`` — and imports no newer
module of the package: the two leaf modules it needs, ``harness.timing`` and
``harness.gate.settings``, are this tree's, loaded by path when the file runs on its own, so both
sides are measured by the same code with the same settings.

Speed: a sample of a candidate is (fastest of ``reps`` forward+backward calls) / (fastest of ``reps``
calls of the reference op), the reference timed just before the candidate in the same process, so
a machine that is slower or busier for a while scales both. The calls are timed by
``harness.timing.fastest`` (thread CPU time with one thread; CUDA events on CUDA). The reference op
is a fixed two-layer GELU MLP (matmuls and elementwise work, like a mixer) at the same ``[B, T, D]``.

Quality: one deterministic training run per (candidate, task) with the gate's explicit settings
(``harness.gate.settings.QualitySettings``); its test token accuracy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _this_tree(relpath: str):
    """``harness/<relpath>`` of this file's tree, loaded by path (it must be a leaf module)."""
    name = "_gate_this_tree_" + relpath.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / relpath
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before running it: dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


if __package__:  # imported as part of the harness package: it is this tree's
    from harness import timing
    from harness.gate import settings
else:  # run by path (the A/B gate's workers), perhaps with another commit's harness on the path
    timing = _this_tree("timing.py")
    settings = _this_tree("gate/settings.py")


# -- speed --------------------------------------------------------------------------------------------
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
    settings: Any  # settings.SpeedSettings
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
                call = _fwd_bwd(spec.build(s.d_model).to(self.device), x, g)
                call()  # a candidate that fails is an error here, not mid-sampling
                self.calls[name] = call
            except Exception as e:  # a broken candidate is a gate finding, not a crash
                self.errors[name] = f"{type(e).__name__}: {e}"

    def sample(self, rotation: int = 0) -> dict[str, dict[str, float]]:
        """One round: for each candidate (order rotated by ``rotation``), reference then candidate."""
        names = list(self.calls)
        if names:
            k = rotation % len(names)
            names = names[k:] + names[:k]
        s, out = self.settings, {}
        for name in names:
            ref = timing.fastest(self.reference, self.device, s.reps, s.threads)
            t = timing.fastest(self.calls[name], self.device, s.reps, s.threads)
            out[name] = {"ratio": t / ref, "seconds": t, "reference_seconds": ref}
        return out


# -- quality ------------------------------------------------------------------------------------------
def _training_setting_names() -> set[str] | None:
    """The training settings this engine knows (an older one knows fewer), or None to pass all."""
    try:
        from harness.tiers import TierConfig

        return {f.name for f in dataclasses.fields(TierConfig)}
    except Exception:
        return None


def quality_run(candidate: str, task: str, quality: Any) -> dict[str, Any]:
    """One deterministic training run (single-threaded CPU): accuracies, or the error."""
    from harness.train import RunSpec, execute, resolve

    t0 = time.perf_counter()
    overrides = quality.train_overrides(_training_setting_names())
    try:
        rec = execute(
            resolve(RunSpec(candidate, task, quality.tier, seed=quality.seed, train_overrides=overrides))
        )
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


def quality_suite(candidates: list[str], tasks: list[str], quality: Any) -> dict[str, dict[str, Any]]:
    """``{"candidate/task": result}`` for every pair, run one after another."""
    return {f"{c}/{t}": quality_run(c, t, quality) for t in tasks for c in candidates}


# -- one side's measurements ----------------------------------------------------------------------------
@dataclass
class Measurement:
    """One side's measurements: quality results and speed samples (ratio per round) per candidate."""

    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    speed: dict[str, list[float]] = field(default_factory=dict)
    speed_errors: dict[str, str] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)


def measure_here(
    candidates: list[str],
    tasks: list[str],
    speed: Any,
    quality: Any,
    samples: int,
    do_quality: bool = True,
    do_speed: bool = True,
) -> Measurement:
    """Both measurements in this process (the baseline form)."""
    m = Measurement(identity=code_identity())
    if do_quality:
        m.quality = quality_suite(candidates, tasks, quality)
    if do_speed:
        previous = torch.get_num_threads()
        try:
            session = SpeedSession(list(candidates), speed)
            m.speed_errors = dict(session.errors)
            m.speed = {n: [] for n in session.calls}
            for r in range(samples):
                for name, s in session.sample(r).items():
                    m.speed[name].append(s["ratio"])
        finally:
            torch.set_num_threads(previous)
    return m


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
                session = SpeedSession(req["names"], settings.SpeedSettings(**req["settings"]))
                resp = {"ok": True, "errors": session.errors}
            elif cmd == "speed_sample":
                if session is None:
                    raise RuntimeError("speed_sample before speed_setup")
                resp = {"ok": True, "sample": session.sample(int(req.get("rotation", 0)))}
            elif cmd == "quality":
                quality = settings.QualitySettings(**req["settings"])
                resp = {"ok": True, "results": quality_suite(req["candidates"], req["tasks"], quality)}
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
