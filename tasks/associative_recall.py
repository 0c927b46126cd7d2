"""Associative recall, Fu et al. 2023 ("Hungry Hungry Hippos", H3), after the HazyResearch/safari
generator ``generate_assoc_recall`` (single-token keys, query key present in the context)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register_task
from harness.task import IGNORE, Batch, Task, TrivialPredictor
from harness.tasks._common import check_int, check_n, device_of

NAME = "associative-recall"


@register_task(NAME, reference="Fu et al. 2023, Hungry Hungry Hippos (H3) associative recall")
class AssociativeRecall(Task):
    """Associative recall: read key-value pairs under a fresh random map, then answer one query.

    Format (``V = vocab_size``, ``T = seq_len`` even, ``P = (T - 2) / 2`` pairs):
      - symbols are ``0 .. V-2``; ``V-1`` is the query marker (safari's copy prefix ``=>``);
        keys are the lower half of the symbols ``0 .. S//2 - 1`` and values the rest
        ``S//2 .. S-1`` (``S = V - 1``);
      - per example, a fresh map assigns every key a value drawn uniformly (values may repeat);
      - positions ``0 .. 2P-1``: ``P`` pairs ``k v`` with keys drawn uniformly with replacement
        (a repeated key repeats its value, as in H3/safari);
      - position ``T-2`` is the marker, position ``T-1`` the query key, drawn uniformly among the
        distinct keys present in the context (safari's ``allow_dot=False``).
    Scored: only the last position; its label is the query key's value under the example's map.
    Token accuracy = sequence accuracy = fraction of examples whose answer is correct.
    H3 uses vocab 10-20 and lengths 20-40. ``generate(length=L)`` (``L`` even) makes the same task
    with more pairs; there is no extrapolation axis, so ``test_lengths()`` is empty.
    """

    reference = "Fu et al. 2023, Hungry Hungry Hippos: towards language modeling with state space models"

    @dataclass(frozen=True)
    class Config:
        vocab_size: int = 20
        seq_len: int = 40

        def __post_init__(self) -> None:
            check_int(NAME, "vocab_size", self.vocab_size, 4, "marker + at least 1 key and 2 values")
            _check_length(self.seq_len, "seq_len")

    TIERS = {
        "smoke": {"config": {"vocab_size": 12, "seq_len": 16}},
        "quick": {"config": {"vocab_size": 20, "seq_len": 32}, "train": {"steps": 3000}},
        "full": {"config": {"vocab_size": 20, "seq_len": 40}},
    }

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def num_keys(self) -> int:
        return (self.config.vocab_size - 1) // 2

    @property
    def n_labels(self) -> int:
        return (self.config.vocab_size - 1) - self.num_keys

    def trivial_predictors(self) -> dict[str, TrivialPredictor]:
        return {**super().trivial_predictors(), "context majority": ContextMajority(self.num_keys)}

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        check_n(NAME, n)
        T = self.config.seq_len if length is None else _check_length(length, "length")
        V = self.config.vocab_size
        nk = self.num_keys
        nv = (V - 1) - nk
        P = (T - 2) // 2
        dev = device_of(generator)
        value_of = nk + torch.randint(0, nv, (n, nk), generator=generator, device=dev)  # fresh map
        keys = torch.randint(0, nk, (n, P), generator=generator, device=dev)
        present = torch.zeros(n, nk, device=dev).scatter_(1, keys, 1.0)
        query = torch.multinomial(present, 1, generator=generator)  # [n, 1], uniform over present keys
        inputs = torch.empty(n, T, dtype=torch.long, device=dev)
        inputs[:, 0 : 2 * P : 2] = keys
        inputs[:, 1 : 2 * P : 2] = value_of.gather(1, keys)
        inputs[:, T - 2] = V - 1
        inputs[:, T - 1] = query[:, 0]
        targets = torch.full((n, T), IGNORE, dtype=torch.long, device=dev)
        targets[:, T - 1] = value_of.gather(1, query)[:, 0]
        return Batch(inputs, targets)


class ContextMajority(TrivialPredictor):
    """No lookup: answer the value that occurs most often in the context (ignores the query key)."""

    def __init__(self, num_keys: int) -> None:
        self.first_value = num_keys

    def predict(self, batch: Batch) -> torch.Tensor:
        values = batch.inputs[:, 1:-2:2]  # the value of every pair
        n_tokens = int(batch.inputs.max()) + 1
        counts = torch.zeros(values.shape[0], n_tokens).scatter_add_(
            1, values, torch.ones_like(values, dtype=torch.float)
        )
        counts[:, : self.first_value] = -1
        pred = torch.full_like(batch.inputs, IGNORE)
        pred[:, -1] = counts.argmax(dim=1)
        return pred


def _check_length(T: object, what: str) -> int:
    check_int(NAME, what, T, 4, "at least one pair, the marker and the query")
    if T % 2:  # type: ignore[operator]
        raise ValueError(f"{NAME}: {what}={T} must be even (pairs, then marker and query)")
    return T  # type: ignore[return-value]
