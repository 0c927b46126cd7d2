"""The gate's report: a table per measurement (terminal, markdown) or one JSON object."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tabulate import tabulate

from harness.gate import PASS, REGRESSION
from harness.gate.verdicts import Verdict
from harness.results import dumps_strict


@dataclass
class GateResult:
    quality: list[Verdict]
    speed: list[Verdict]
    seconds: float
    title: str
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)  # which code each side imported

    @property
    def regressions(self) -> list[str]:
        return [v.key for v in [*self.quality, *self.speed] if v.regression]

    @property
    def exit_code(self) -> int:
        return REGRESSION if self.regressions else PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "passed": not self.regressions,
            "regressions": self.regressions,
            "seconds": self.seconds,
            "quality": [asdict(v) for v in self.quality],
            "speed": [asdict(v) for v in self.speed],
            "sides": self.sides,
        }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _verdict(v: Verdict) -> str:
    return v.status.upper() if v.regression else v.status


def render(result: GateResult, fmt: str = "table", base_label: str = "baseline") -> str:
    if fmt == "json":
        return dumps_strict(result.to_dict(), indent=2)
    tablefmt = "github" if fmt == "markdown" else "simple"
    parts = [result.title, ""]
    if result.quality:
        rows = [
            [v.key, _fmt(v.base, ".4f"), _fmt(v.new, ".4f"), _fmt(v.change, "+.4f"), _verdict(v)]
            for v in result.quality
        ]
        parts.append("quality (test token accuracy)")
        headers = ["candidate/task", base_label, "current", "change", "verdict"]
        parts.append(tabulate(rows, headers=headers, tablefmt=tablefmt))
        parts.extend(f"  {v.key}: {v.error}" for v in result.quality if v.error)
        parts.append("")
    if result.speed:
        rows = [
            [
                v.key,
                _fmt(v.base, ".3f"),
                _fmt(v.new, ".3f"),
                _fmt(v.change, ".2f") + ("x" if v.change is not None else ""),
                _fmt(v.p_value, ".2g"),
                _verdict(v),
            ]
            for v in result.speed
        ]
        parts.append("speed (forward+backward time / reference op time, medians)")
        headers = ["candidate", base_label, "current", "change", "p", "verdict"]
        parts.append(tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True))
        parts.extend(f"  {v.key}: {v.error}" for v in result.speed if v.error)
        parts.append("")
    n = len(result.regressions)
    verdict = "PASS" if not n else f"FAIL: {n} regression(s): " + ", ".join(result.regressions)
    parts.append(f"gate: {verdict}  ({result.seconds:.0f} s)")
    return "\n".join(parts)
