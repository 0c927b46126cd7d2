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
