"""Regression verdicts: did a measurement get worse from a base to a new side? The one judge of
``harness gate`` and ``harness history compare``.

Three kinds of measurement, one rule each (``judge``), all with the thresholds of ``Thresholds``:

- ``speed``: repeated samples of a time (the gate's forward+backward ratios to its reference op,
  asv's ``time_`` samples), lower is better. Worse (``slower``) only when BOTH the median grew by more
  than ``factor`` (default 1.3) AND a one-sided Mann-Whitney U test says the new samples are larger
  with p < ``alpha`` (default 0.01): the factor ignores small real changes and noise in the medians,
  the test ignores a shift of the medians that the spread of the samples does not support, so a
  shared, noisy machine does not make the verdict flake while a 1.5x slowdown is caught. ``faster``
  is the mirror image. With fewer than 5 samples a side the test cannot reach p < 0.01 and nothing is
  called slower: measure more (asv's ``--quick`` records one sample).
- ``quality``: one score of a deterministic run (the gate's test token accuracy, asv's error rates);
  worse when it moved the wrong way by more than ``tolerance`` (absolute, default 0.02: room for a
  different CPU's or torch build's rounding); ``higher_is_better`` says which way is wrong.
- ``value``: one reading without samples (asv's ``peakmem_``, other ``track_`` numbers), lower is
  better; worse when it grew by more than ``factor``.

Whatever the kind: no base is ``new``, no new value ``missing`` (neither fails), a new side that
failed is ``failed`` (a regression) unless the base failed too (``failed in both``: broken before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from harness.gate.settings import Thresholds

SPEED, QUALITY, VALUE = "speed", "quality", "value"
KINDS = (SPEED, QUALITY, VALUE)
REGRESSIONS = ("slower", "worse", "failed")


DEFAULTS = Thresholds()


@dataclass
class Verdict:
    key: str
    kind: str
    base: float | None  # median of the samples (speed) or the single value
    new: float | None
    change: float | None  # new / base (speed, value) or new - base (quality)
    p_value: float | None  # speed only
    status: str  # ok | slower | faster | worse | better | new | missing | failed | failed in both
    error: str | None = None

    @property
    def regression(self) -> bool:
        return self.status in REGRESSIONS


def judge(
    key: str,
    kind: str,
    base: Sequence[float] | float | None,
    new: Sequence[float] | float | None,
    thresholds: Thresholds = DEFAULTS,
    *,
    higher_is_better: bool = True,
    error: str | None = None,
    base_error: str | None = None,
) -> Verdict:
    """The verdict on one measurement: ``base`` and ``new`` are samples (``speed``) or one number
    (``quality``, ``value``; a one-element sequence is accepted); ``error`` says the new side failed,
    ``base_error`` that the base did."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    b, n = _values(base), _values(new)
    bm = float(np.median(b)) if b else None
    nm = float(np.median(n)) if n else None
    if error is not None:
        return Verdict(key, kind, bm, None, None, None, "failed in both" if base_error else "failed", error)
    if not n:
        return Verdict(key, kind, bm, None, None, None, "missing")
    if not b:
        return Verdict(key, kind, None, nm, None, None, "new")
    t = thresholds
    if kind == QUALITY:
        change = nm - bm
        gain = change if higher_is_better else -change
        status = "worse" if gain < -t.tolerance else "better" if gain > t.tolerance else "ok"
        return Verdict(key, kind, bm, nm, change, None, status)
    change = nm / bm if bm else float("inf")
    grew, shrank = nm > t.factor * bm, bm > t.factor * nm  # (not the ratio: swapping sides mirrors exactly)
    if kind == VALUE:
        status = "worse" if grew else "better" if shrank else "ok"
        return Verdict(key, kind, bm, nm, change, None, status)
    p_slower = float(mannwhitneyu(n, b, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(n, b, alternative="less").pvalue)
    if grew and p_slower < t.alpha:
        return Verdict(key, kind, bm, nm, change, p_slower, "slower")
    if shrank and p_faster < t.alpha:
        return Verdict(key, kind, bm, nm, change, p_faster, "faster")
    return Verdict(key, kind, bm, nm, change, p_slower, "ok")


def _values(x: Sequence[float] | float | None) -> list[float]:
    if x is None:
        return []
    if isinstance(x, (int, float)):
        return [float(x)]
    return [float(v) for v in x if v is not None and v == v]  # drop None and NaN (asv: failed, skipped)


# -- the gate's measurements ------------------------------------------------------------------------
FINISHED = ("ok", "diverged")  # a diverged quality run scores 0: it counts, it did not fail


def quality_verdict(
    key: str, base: dict[str, Any] | None, new: dict[str, Any] | None, thresholds: Thresholds = DEFAULTS
) -> Verdict:
    """The verdict on one quality run (``worker.quality_run``'s result) against the base's."""
    score = base.get("token_acc") if base and base.get("status") in FINISHED else None
    base_error = (
        base.get("error") or base.get("status") if base and base.get("status") not in FINISHED else None
    )
    if new is not None and new.get("status") not in FINISHED:
        return judge(
            key, QUALITY, score, None, thresholds, error=new.get("error") or "failed", base_error=base_error
        )
    return judge(key, QUALITY, score, None if new is None else new.get("token_acc"), thresholds)


def judge_sides(
    base_quality: dict[str, dict[str, Any]],
    base_speed: dict[str, list[float]],
    new: Any,
    thresholds: Thresholds = DEFAULTS,
    base_speed_errors: dict[str, str] | None = None,
) -> tuple[list[Verdict], list[Verdict]]:
    """(quality verdicts, speed verdicts) of a new side (a ``worker.Measurement``) against a base."""
    qkeys = list(dict.fromkeys([*base_quality, *new.quality]))
    quality = [quality_verdict(k, base_quality.get(k), new.quality.get(k), thresholds) for k in qkeys]
    names = list(dict.fromkeys([*base_speed, *new.speed, *new.speed_errors]))
    speed = [
        judge(
            n,
            SPEED,
            base_speed.get(n),
            new.speed.get(n),
            thresholds,
            error=new.speed_errors.get(n),
            base_error=(base_speed_errors or {}).get(n),
        )
        for n in names
    ]
    return quality, speed
