"""The A/B form of the gate: the base commit checked out in a temporary git worktree and measured
with its own code in one worker subprocess, the current tree in another, interleaved round by round
on the same machine at the same time (see :mod:`harness.gate.worker` for what a worker measures and
:mod:`harness.worktree` for the checkout and its import root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT
from harness.gate import GateError, worker
from harness.gate.settings import QualitySettings, SpeedSettings
from harness.gate.worker import Measurement
from harness.worktree import checkout, pythonpath_env


class Worker:
    """A gate worker subprocess speaking JSON lines (one side of an A/B comparison)."""

    def __init__(self, label: str, env: dict[str, str], cwd: Path) -> None:
        self.label = label
        code = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker's stray output and tracebacks reach the user
            text=True,
            env=env,
            cwd=cwd,
            bufsize=1,
        )

    def send(self, **req: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise GateError(f"the {self.label} worker exited (code {self.proc.poll()})") from None

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise GateError(f"the {self.label} worker exited (code {self.proc.wait()}); see its output above")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise GateError(
                f"the {self.label} worker failed: {resp.get('error')}\n{resp.get('traceback', '')}"
            )
        return resp

    def ask(self, **req: Any) -> dict[str, Any]:
        self.send(**req)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout=10)
            except (GateError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()


def measure_ab(
    base_ref: str,
    candidates: list[str],
    tasks: list[str],
    speed: SpeedSettings,
    quality: QualitySettings,
    samples: int,
    repo: Path = REPO_ROOT,
    do_quality: bool = True,
    do_speed: bool = True,
) -> tuple[Measurement, Measurement]:
    """(base, current), each measured in its own worker; speed rounds interleaved A, B, B, A, ..."""
    with checkout(repo, base_ref) as co:
        workers = {
            # cwd: not the worktree root, whose harness/ folder would shadow the import root
            "base": Worker(f"base ({co.sha[:8]})", pythonpath_env(co.import_root), co.tree.parent),
            "current": Worker("current", dict(os.environ), Path.cwd()),
        }
        try:
            out = {k: Measurement(identity=w.ask(cmd="hello")) for k, w in workers.items()}
            if do_quality:  # deterministic whatever the load: both sides at once, one core each
                for w in workers.values():
                    w.send(cmd="quality", candidates=candidates, tasks=tasks, settings=quality.to_dict())
                for k, w in workers.items():
                    out[k].quality = w.receive()["results"]
            if do_speed:
                for k, w in workers.items():
                    errors = w.ask(cmd="speed_setup", names=candidates, settings=speed.to_dict())["errors"]
                    out[k].speed_errors = errors
                    out[k].speed = {n: [] for n in candidates if n not in errors}
                order = ["base", "current"]
                for r in range(samples):
                    for k in order if r % 2 == 0 else order[::-1]:
                        for name, s in workers[k].ask(cmd="speed_sample", rotation=r)["sample"].items():
                            out[k].speed[name].append(s["ratio"])
            return out["base"], out["current"]
        finally:
            for w in workers.values():
                w.close()
