"""The task contract: a seeded, vectorised generator of token sequences with scored positions.

A task makes ``Batch(inputs, targets)`` of shape ``[n, T]`` (int64). ``targets`` holds the label at
every scored position and ``IGNORE`` (-100) elsewhere. The engine computes, identically for every
task:
  - token accuracy: correct scored positions / scored positions;
  - sequence accuracy: examples whose scored positions are all correct / examples.
Each task's docstring states its exact format and what is scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.registry import RegistryError, suggest

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    inputs: Tensor  # [n, T] int64
    targets: Tensor  # [n, T] int64, IGNORE where unscored

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape:
            raise ValueError(
                f"inputs {tuple(self.inputs.shape)} and targets {tuple(self.targets.shape)} differ"
            )


class Task:
    """Base class of every quality task.

    Subclasses define:
      - ``Config``: a frozen dataclass of the task's parameters (vocab, lengths, ...);
      - ``TIERS``: ``{tier: {"config": {...}, "train": {...}}}`` — the task's config per tier and
        optional overrides of the tier's training settings (e.g. more steps for a harder task);
      - ``vocab_size`` and ``seq_len`` properties; ``generate``; optionally ``test_lengths``.
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Config: ClassVar[type]
    TIERS: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def config_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Config)]

    @classmethod
    def make_config(cls, tier: str, overrides: dict[str, Any] | None = None) -> Any:
        """The tier's config with ``overrides``; unknown fields are errors naming the allowed ones."""
        if tier not in cls.TIERS:
            raise RegistryError(suggest(tier, cls.TIERS, f"tier for task {cls.name!r}"))
        values = dict(cls.TIERS[tier].get("config", {}))
        for key, val in (overrides or {}).items():
            if key not in cls.config_fields():
                raise RegistryError(suggest(key, cls.config_fields(), f"config field of task {cls.name!r}"))
            values[key] = val
        return cls.Config(**values)

    @classmethod
    def from_tier(cls, tier: str, overrides: dict[str, Any] | None = None) -> Task:
        return cls(cls.make_config(tier, overrides))

    @classmethod
    def train_overrides(cls, tier: str) -> dict[str, Any]:
        return dict(cls.TIERS.get(tier, {}).get("train", {}))

    # -- to implement ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def seq_len(self) -> int:  # pragma: no cover - abstract
        """Training sequence length (the longest, where lengths vary)."""
        raise NotImplementedError

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        """``n`` examples from ``generator``; ``length`` selects a test length where the task has one."""
        raise NotImplementedError  # pragma: no cover - abstract

    def test_lengths(self) -> list[int]:
        """Longer test lengths for extrapolation (empty if the task has no length axis)."""
        return []

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def has_length_axis(self) -> bool:
        """True when the task tests at longer lengths: then extrapolation is its verdict."""
        return bool(self.test_lengths())

    # -- reference rows -------------------------------------------------------------------------
    @property
    def n_labels(self) -> int | None:
        """How many answers a scored position can take (chance = 1 / n_labels); None if unknown."""
        return None

    def trivial_predictors(self) -> dict[str, TrivialPredictor]:
        """Predictors that use no lookup or state tracking, scored like a candidate to give each
        column its reference row. The generic ones: the most frequent label, and the most
        frequent label at each position (both fitted on training data). Tasks add their own
        (e.g. MQAR's position-only guess)."""
        return {"majority": MajorityLabel(), "majority by position": PositionMajority()}


class TrivialPredictor:
    """A fixed rule: ``fit`` on a training batch, then ``predict`` labels ``[n, T]`` for any batch."""

    def fit(self, batch: Batch) -> None:  # noqa: B027 - most rules need no fitting
        pass

    def predict(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def scored_labels(batch: Batch) -> Tensor:
    return batch.targets[batch.targets != IGNORE]


class MajorityLabel(TrivialPredictor):
    """The single most frequent label of the training data, everywhere."""

    def fit(self, batch: Batch) -> None:
        self.label = int(torch.mode(scored_labels(batch)).values)

    def predict(self, batch: Batch) -> Tensor:
        return torch.full_like(batch.inputs, self.label)


class PositionMajority(TrivialPredictor):
    """The most frequent label at each position of the training data; beyond the training length
    (where no label was ever seen) the overall most frequent one."""

    def fit(self, batch: Batch) -> None:
        t = batch.targets
        self.overall = int(torch.mode(scored_labels(batch)).values)
        n_classes = int(t.max()) + 1 if (t != IGNORE).any() else 1
        counts = torch.zeros(t.shape[1], n_classes, dtype=torch.long)
        mask = t != IGNORE
        pos = torch.arange(t.shape[1]).expand_as(t)
        counts.index_put_(
            (pos[mask], t[mask]), torch.ones(int(mask.sum()), dtype=torch.long), accumulate=True
        )
        self.by_position = torch.where(counts.sum(1) > 0, counts.argmax(1), self.overall)

    def predict(self, batch: Batch) -> Tensor:
        T = batch.inputs.shape[1]
        labels = torch.full((T,), self.overall, dtype=torch.long)
        k = min(T, self.by_position.shape[0])
        labels[:k] = self.by_position[:k]
        return labels.expand_as(batch.inputs).clone()
