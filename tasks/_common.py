"""Helpers shared by the built-in tasks: validation, random subsets, power-law slots, lengths.

Every helper draws randomness only from the ``torch.Generator`` it is given (never the global RNG)
and makes its tensors on that generator's device, so a task is reproducible from its seed alone.
All of them are vectorised over the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.task import IGNORE


def device_of(generator: torch.Generator) -> torch.device:
    return torch.device(generator.device)


def check_int(task: str, name: str, value: object, minimum: int, why: str = "") -> int:
    """``value`` must be an ``int`` (not a bool) >= ``minimum``; the error names the task and field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{task}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{task}: {name}={value} is too small; allowed: >= {minimum}{reason}")
    return value


def check_test_lengths(task: str, value: object, longer_than: int) -> tuple[int, ...]:
    """A tuple of distinct ints, each longer than the training length ``longer_than``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{task}: test_lengths must be a sequence of ints, got {value!r}")
    out = tuple(value)
    for L in out:
        check_int(
            task, "each of test_lengths", L, longer_than + 1, f"longer than training length {longer_than}"
        )
    if len(set(out)) != len(out):
        raise ValueError(f"{task}: test_lengths {out} has duplicates")
    return tuple(sorted(out))


def check_n(task: str, n: object) -> int:
    return check_int(task, "n (number of examples)", n, 1)


def random_subsets(n: int, population: int, k: int, generator: torch.Generator) -> Tensor:
    """``[n, k]`` int64: for each row, ``k`` distinct values of ``range(population)`` in random order.

    Uniform over ordered k-subsets. Floyd's algorithm (a uniform k-subset in ``k`` steps, each
    vectorised over the rows: ``O(n k^2)`` work however large ``population`` is, where drawing a
    uniform per vocabulary entry would cost ``O(n * population)``), then a uniform shuffle.
    """
    if not 0 < k <= population:
        raise ValueError(f"cannot draw {k} distinct values from {population}")
    dev = device_of(generator)
    out = torch.empty(n, k, dtype=torch.long, device=dev)
    for i, j in enumerate(range(population - k, population)):
        t = torch.randint(0, j + 1, (n,), generator=generator, device=dev)
        taken = (out[:, :i] == t[:, None]).any(dim=1)
        out[:, i] = torch.where(taken, j, t)  # j is never taken yet: earlier picks are all < j
    order = torch.rand(n, k, generator=generator, device=dev).argsort(dim=1)
    return out.gather(1, order)


def power_law_slots(n: int, space: int, k: int, alpha: float, generator: torch.Generator) -> Tensor:
    """``[n, k]`` distinct slots of ``range(space)`` drawn without replacement, ``p(i) ~ (i+1)^(alpha-1)``.

    Zoology's query-gap law (``p = a * arange(1, space+1) ** (a - 1)``, normalised), sampled by
    successive draws without replacement like ``np.random.choice(..., replace=False, p=p)``; column
    ``j`` is the ``j``-th draw, so early columns tend to hold small slots. ``alpha = 1`` is uniform.
    """
    if not 0 < k <= space:
        raise ValueError(f"cannot draw {k} distinct slots from {space}")
    dev = device_of(generator)
    p = torch.arange(1, space + 1, dtype=torch.float64, device=dev) ** (alpha - 1.0)
    p = (p / p.sum()).expand(n, space)
    return torch.multinomial(p, k, replacement=False, generator=generator)


def sample_lengths(n: int, lo: int, hi: int, generator: torch.Generator) -> Tensor:
    """``[n]`` int64 lengths uniform over the integers ``lo..hi`` inclusive."""
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=device_of(generator))


def pad_beyond(inputs: Tensor, targets: Tensor, lengths: Tensor, pad: int) -> None:
    """In place: positions ``>= lengths[b]`` become ``pad`` in inputs and ``IGNORE`` in targets.

    Right padding is safe for a causal model: a real position never sees a pad.
    """
    pos = torch.arange(inputs.shape[1], device=inputs.device)
    beyond = pos[None, :] >= lengths[:, None]
    inputs.masked_fill_(beyond, pad)
    targets.masked_fill_(beyond, IGNORE)


def keep_only(targets: Tensor, positions: Tensor) -> Tensor:
    """A copy of ``targets`` with IGNORE everywhere except ``positions`` (``[n]``, one per row)."""
    out = torch.full_like(targets, IGNORE)
    idx = positions[:, None]
    out.scatter_(1, idx, targets.gather(1, idx))
    return out


def check_scored(task: str, value: object) -> str:
    if value not in ("all", "final"):
        raise ValueError(f"{task}: scored={value!r} is not allowed; allowed: 'all' or 'final'")
    return value  # type: ignore[return-value]


def check_length_split(task: str, min_len: object, max_len: object, test_lengths: object) -> tuple[int, ...]:
    """Validate a variable-length split (train lengths ``min_len..max_len``); returns test lengths."""
    check_int(task, "min_len", min_len, 1)
    check_int(task, "max_len", max_len, min_len, f"max_len must be >= min_len={min_len}")  # type: ignore[arg-type]
    return check_test_lengths(task, test_lengths, max_len)  # type: ignore[arg-type]


#: Tier sizes shared by the length-split tasks (parity, modular arithmetic): Grazzi et al. train on
#: 3-40 and test on 40-256 (``full``); ``quick`` is the scaled-down split for a 2-core CPU.
LENGTH_SPLIT_TIERS = {
    "smoke": {"config": {"min_len": 3, "max_len": 8, "test_lengths": (16,)}},
    "quick": {"config": {"min_len": 3, "max_len": 20, "test_lengths": (40, 64)}, "train": {"steps": 2000}},
    "full": {"config": {"min_len": 3, "max_len": 40, "test_lengths": (64, 128, 256)}},
}


def length_split_config(task: str) -> type:
    """The config dataclass of a length-split task, with errors naming ``task``."""

    @dataclass(frozen=True)
    class Config:
        min_len: int = 3
        max_len: int = 40
        test_lengths: tuple[int, ...] = (64, 128, 256)
        scored: str = "all"

        def __post_init__(self) -> None:
            tl = check_length_split(task, self.min_len, self.max_len, self.test_lengths)
            object.__setattr__(self, "test_lengths", tl)
            check_scored(task, self.scored)

    return Config
