"""Multi-query associative recall (MQAR), Arora et al. 2023, "Zoology" (HazyResearch/zoology,
``zoology/data/multiquery_ar.py``), re-implemented vectorised in torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.registry import register_task
from harness.task import IGNORE, Batch, Task, TrivialPredictor
from harness.tasks._common import check_int, check_n, device_of, power_law_slots, random_subsets

NAME = "mqar"


@register_task(NAME, reference="Arora et al. 2023, Zoology: measuring and improving recall (MQAR)")
class MQAR(Task):
    """Multi-query associative recall: recall the value bound to each key, queried later, in any order.

    Format (``V = vocab_size``, ``T = seq_len`` even, ``k = num_pairs``, ``T >= 4k``):
      - keys are drawn from the lower half ``1 .. V//2 - 1`` (token 0 is reserved for the filler),
        values from the upper half ``V//2 .. V-1``; per example ``k`` distinct keys and ``k``
        distinct values, paired in drawing order;
      - context (positions ``0 .. 2k-1``): ``k1 v1 k2 v2 ... kk vk``;
      - after the context there are ``space = (T - 2k) // 2`` even query slots at positions
        ``2k + 2s``; each key is queried exactly once: key ``j`` goes to slot ``s_j``, where
        ``s_1, s_2, ...`` are drawn without replacement with ``p(s) ~ (s+1)^(alpha-1)``
        (Zoology's power law, favouring early slots, hence short key-to-query gaps for the first
        keys of the context; ``alpha=1`` is uniform);
      - every other position after the context (odd positions, unused slots) is a filler: with
        ``random_filler=True`` (Zoology's ``random_non_queries=True``, the default) a uniform
        random token of the whole vocabulary, which may coincide with a key or value (noise);
        with ``random_filler=False`` the reserved token 0.
    Scored: only the ``k`` query positions; the label at a query position is the value paired
    with that key in the context (label aligned with the query token itself). Everything else
    is IGNORE.
    Token accuracy: fraction of queries answered correctly. Sequence accuracy: fraction of
    examples whose ``k`` queries are all correct.

    Paper grid (Zoology Fig. 2): vocab 8192 and ``(T, k)`` in ``{(64, 4), (128, 8), (256, 16),
    (512, 64)}``; the ``full`` tier defaults to ``(256, 16)``, set ``seq_len``/``num_pairs`` for the
    other points. ``alpha`` defaults to 0.01, the value of Zoology's code (``power_a=0.01``).
    ``generate(length=L)`` makes the same task at length ``L`` (even, ``>= 4k``); MQAR has no
    extrapolation axis, so ``test_lengths()`` is empty.
    """

    reference = "Arora et al. 2023, Zoology: measuring and improving recall in efficient LMs"

    @dataclass(frozen=True)
    class Config:
        vocab_size: int = 8192
        seq_len: int = 256
        num_pairs: int = 16
        alpha: float = 0.01
        random_filler: bool = True

        def __post_init__(self) -> None:
            check_int(NAME, "num_pairs", self.num_pairs, 1)
            k = self.num_pairs
            # k distinct keys in 1..V//2-1 and k distinct values in V//2..V-1
            check_int(
                NAME,
                "vocab_size",
                self.vocab_size,
                2 * k + 2,
                f"num_pairs={k} needs {k} distinct keys in 1..V//2-1 and {k} values in V//2..V-1",
            )
            _check_length(self.seq_len, k, "seq_len")
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
                raise ValueError(f"{NAME}: alpha must be a number > 0, got {self.alpha!r}")
            if not (math.isfinite(self.alpha) and self.alpha > 0):
                raise ValueError(f"{NAME}: alpha={self.alpha} is not allowed; allowed: a finite number > 0")
            if not isinstance(self.random_filler, bool):
                raise ValueError(f"{NAME}: random_filler must be True or False, got {self.random_filler!r}")

    TIERS = {
        "smoke": {"config": {"vocab_size": 32, "seq_len": 32, "num_pairs": 4}},
        "quick": {"config": {"vocab_size": 64, "seq_len": 32, "num_pairs": 8}, "train": {"steps": 3000}},
        "full": {"config": {"vocab_size": 8192, "seq_len": 256, "num_pairs": 16}},
    }

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_labels(self) -> int:
        return self.config.vocab_size - self.config.vocab_size // 2

    def trivial_predictors(self) -> dict[str, TrivialPredictor]:
        return {**super().trivial_predictors(), "position only": PositionOnly(self.config.num_pairs)}

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        check_n(NAME, n)
        c = self.config
        T = c.seq_len if length is None else _check_length(length, c.num_pairs, "length")
        V, k = c.vocab_size, c.num_pairs
        half = V // 2
        dev = device_of(generator)
        keys = 1 + random_subsets(n, half - 1, k, generator)
        values = half + random_subsets(n, V - half, k, generator)
        slots = power_law_slots(n, (T - 2 * k) // 2, k, c.alpha, generator)
        if c.random_filler:
            inputs = torch.randint(0, V, (n, T), generator=generator, device=dev)
        else:
            inputs = torch.zeros(n, T, dtype=torch.long, device=dev)
        inputs[:, 0 : 2 * k : 2] = keys
        inputs[:, 1 : 2 * k : 2] = values
        qpos = 2 * k + 2 * slots
        inputs.scatter_(1, qpos, keys)
        targets = torch.full((n, T), IGNORE, dtype=torch.long, device=dev)
        targets.scatter_(1, qpos, values)
        return Batch(inputs, targets)


class PositionOnly(TrivialPredictor):
    """No lookup by key: at a query position, copy the value of the pair that is most often queried
    there (the power law ties early slots to early pairs), fitted on training data."""

    def __init__(self, num_pairs: int) -> None:
        self.k = num_pairs

    def fit(self, batch: Batch) -> None:
        inputs, targets = batch.inputs, batch.targets
        n, T = inputs.shape
        keys = inputs[:, 0 : 2 * self.k : 2]  # [n, k]
        rows, pos = (targets != IGNORE).nonzero(as_tuple=True)
        pair = (keys[rows] == inputs[rows, pos][:, None]).float().argmax(dim=1)
        counts = torch.zeros(T, self.k)
        counts.index_put_((pos, pair), torch.ones(len(pos)), accumulate=True)
        self.pair_at = counts.argmax(dim=1)  # unseen positions: pair 0

    def predict(self, batch: Batch) -> torch.Tensor:
        T = batch.inputs.shape[1]
        pair_at = torch.zeros(T, dtype=torch.long)
        k = min(T, self.pair_at.shape[0])
        pair_at[:k] = self.pair_at[:k]
        return batch.inputs[:, 2 * pair_at + 1]


def _check_length(T: object, k: int, what: str) -> int:
    check_int(NAME, what, T, 4 * k, f"num_pairs={k} needs a context of 2k and k distinct even query slots")
    if T % 2:  # type: ignore[operator]
        raise ValueError(f"{NAME}: {what}={T} must be even (keys are queried at even slots)")
    return T  # type: ignore[return-value]
