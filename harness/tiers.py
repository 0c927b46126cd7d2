"""Tiers fix the backbone and the training protocol; identical for every candidate.

``smoke`` checks plumbing in seconds (no quality claims). ``quick`` is the CPU default, sized for a
2-core machine yet large enough that the known separations appear: each task sets its step budget
(2000-3000 steps of batch 32; training stops early once valid reaches ``solve_threshold``), three
seeds, a grid of three learning rates chosen on valid per (candidate, task).

``quick`` trains one block (mixer + MLP). One layer is what the state-tracking separations are
about (Merrill et al. 2024 and Grazzi et al. 2025 state them per layer): with two, a diagonal model
composes its way to part of S5 in distribution and blurs the comparison of transitions, and every
run costs twice as much. With the short causal conv in front of the mixer one block still solves
MQAR with softmax attention (test token accuracy 1.0). ``full`` keeps two layers. ``full`` encodes published protocols
(sizes, several seeds, a learning-rate sweep) and is meant for GPUs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.registry import RegistryError, suggest


@dataclass(frozen=True)
class TierConfig:
    d_model: int
    n_layers: int
    mlp_ratio: int
    short_conv: int
    steps: int
    batch_size: int
    lrs: tuple[float, ...]
    weight_decay: float
    warmup_frac: float
    grad_clip: float
    n_seeds: int
    n_valid: int
    n_test: int
    eval_batch: int
    eval_every: int  # steps between early-stopping checks on valid
    n_check: int  # valid examples (per length) each check scores
    solve_threshold: float  # the valid selection score at which a task counts as solved: stop

    def with_overrides(self, overrides: dict) -> TierConfig:
        fields = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in fields:
                raise RegistryError(suggest(key, fields, "training setting"))
        values = dict(overrides)
        if "lrs" in values:
            values["lrs"] = tuple(values["lrs"])
        return dataclasses.replace(self, **values)


TIERS: dict[str, TierConfig] = {
    "smoke": TierConfig(
        d_model=32,
        n_layers=1,
        mlp_ratio=2,
        short_conv=4,
        steps=8,
        batch_size=8,
        lrs=(3e-3,),
        weight_decay=0.0,
        warmup_frac=0.1,
        grad_clip=1.0,
        n_seeds=1,
        n_valid=32,
        n_test=32,
        eval_batch=32,
        eval_every=4,
        n_check=32,
        solve_threshold=0.99,
    ),
    "quick": TierConfig(
        d_model=64,
        n_layers=1,
        mlp_ratio=2,
        short_conv=4,
        steps=2000,
        batch_size=32,
        lrs=(1e-3, 3e-3, 1e-2),
        weight_decay=0.1,
        warmup_frac=0.05,
        grad_clip=1.0,
        n_seeds=3,
        n_valid=512,
        n_test=1024,
        eval_batch=512,
        eval_every=100,
        n_check=256,
        solve_threshold=0.99,
    ),
    "full": TierConfig(
        d_model=128,
        n_layers=2,
        mlp_ratio=4,
        short_conv=4,
        steps=20000,
        batch_size=64,
        lrs=(1e-4, 3e-4, 1e-3, 3e-3),
        weight_decay=0.1,
        warmup_frac=0.05,
        grad_clip=1.0,
        n_seeds=3,
        n_valid=2000,
        n_test=3000,
        eval_batch=250,
        eval_every=500,
        n_check=500,
        solve_threshold=0.99,
    ),
}


def get_tier(name: str) -> TierConfig:
    if name not in TIERS:
        raise RegistryError(suggest(name, TIERS, "tier"))
    return TIERS[name]
