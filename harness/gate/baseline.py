"""Baseline files of the gate: ``results/baselines/<machine class>.json``, one per machine class,
written deliberately (``harness gate --update-baseline``) and committed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.environment import environment
from harness.gate import GateError
from harness.gate.settings import QualitySettings, SpeedSettings
from harness.gate.worker import Measurement

SCHEMA = 1


def baseline_path(machine: str, results_dir: Path) -> Path:
    return results_dir / "baselines" / f"{machine}.json"


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GateError(f"cannot read baseline {path}: {e}") from e
    if data.get("schema") != SCHEMA:
        raise GateError(f"baseline {path} has schema {data.get('schema')!r}, expected {SCHEMA}")
    return data


def make_baseline(
    machine: str,
    m: Measurement,
    candidates: list[str],
    tasks: list[str],
    speed: SpeedSettings,
    quality: QualitySettings,
) -> dict[str, Any]:
    env = environment(speed.device)
    return {
        "schema": SCHEMA,
        "machine_class": machine,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": env.get("git_commit"),
        "git_dirty": env.get("git_dirty"),
        "environment": env,
        "candidates": list(candidates),
        "tasks": list(tasks),
        "speed_settings": speed.to_dict(),
        "quality_settings": quality.to_dict(),
        "quality": m.quality,
        "speed": {n: {"ratio_samples": v, "median_ratio": float(np.median(v))} for n, v in m.speed.items()},
        "speed_errors": m.speed_errors,
    }


def base_speed_samples(baseline: dict[str, Any]) -> dict[str, list[float]]:
    return {n: v["ratio_samples"] for n, v in baseline.get("speed", {}).items()}


def check_comparable(baseline: dict[str, Any], speed: SpeedSettings, quality: QualitySettings) -> None:
    """A baseline measured with other settings (or another measuring method) cannot be compared."""
    for what, mine, theirs in (
        ("speed", speed.to_dict(), baseline.get("speed_settings")),
        ("quality", quality.to_dict(), baseline.get("quality_settings")),
    ):
        if theirs != mine:
            raise GateError(
                f"the {what} settings differ from the baseline's ({theirs} vs {mine}); "
                "measure with the baseline's, or --update-baseline"
            )
