"""What the gate measures, defined once: the quality set, the settings of both measurements and the
thresholds of the judge (``verdicts``).

The quality set — a few candidates trained briefly and deterministically on one task — is also the
asv suite's quality history (``benchmarks/bench_quality.py``), so the gate and the history watch the
same runs. The runs are short on purpose: the smoke backbone for an explicit number of steps, and
every setting that bounds a run's length (steps, evaluation sizes, how often and on how many
examples training checks whether to stop early) is written out here, not taken from the tier, so a
change of the tier's budgets never lengthens the gate.

A leaf module (standard library only): the gate's worker and the asv suite load this tree's copy by
path while they import another commit's ``harness``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CANDIDATES = ("softmax", "linear-attention", "diagonal")
TASKS = ("associative-recall",)


@dataclass(frozen=True)
class SpeedSettings:
    batch: int = 8
    seq_len: int = 128
    d_model: int = 64
    reps: int = 3  # one-call samples per measurement; the fastest counts
    device: str = "cpu"
    threads: int = 1  # CPU threads (single: stable on a shared machine, like training)
    # bump when the measurement changes (old baselines are then not comparable); 2: harness.timing
    method: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QualitySettings:
    tier: str = "smoke"
    steps: int = 300
    batch_size: int = 32
    n_valid: int = 64
    n_test: int = 512
    eval_batch: int = 256
    eval_every: int = 4  # steps between the early-stopping checks on valid
    n_check: int = 32  # valid examples each check scores
    solve_threshold: float = 0.99  # valid score at which a run stops early
    seed: int = 0

    def train_overrides(self, known: set[str] | None = None) -> dict[str, Any]:
        """The training settings of a quality run (on top of the tier and the task's own); with
        ``known`` (the engine's training-setting names) only those: an engine from before early
        stopping has no ``eval_every``, and trained every run to ``steps`` anyway."""
        out = {k: v for k, v in self.to_dict().items() if k not in ("tier", "seed")}
        return out if known is None else {k: v for k, v in out.items() if k in known}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression (``verdicts.judge``)."""

    factor: float = 1.3  # speed and value: the change (ratio of medians) that counts
    alpha: float = 0.01  # speed: significance level of the one-sided Mann-Whitney U test
    tolerance: float = 0.02  # quality: the absolute change of a score that counts
