"""Selective copying, Gu & Dao 2023 ("Mamba", §4.1.1) in the MAD formulation (Poli et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register_task
from harness.task import IGNORE, Batch, Task, TrivialPredictor
from harness.tasks._common import check_int, check_n, device_of, random_subsets

NAME = "selective-copy"


@register_task(NAME, reference="Gu & Dao 2023, Mamba §4.1.1 selective copying; Poli et al. 2024, MAD")
class SelectiveCopy(Task):
    """Selective copying: remember the data tokens scattered among blanks, then emit them in order.

    Format (``V = vocab_size``, ``T = seq_len`` total, ``k = num_tokens``):
      - data symbols are ``0 .. V-3``; ``V-2`` is the blank (noise) token, ``V-1`` the marker;
      - positions ``0 .. T-k-1`` (the data region) hold ``k`` data tokens, drawn uniformly with
        replacement, at ``k`` distinct uniformly random positions; every other position of the
        region is the blank token (one blank symbol, as in MAD; Mamba's figure draws blanks too);
      - positions ``T-k .. T-1`` are ``k`` marker tokens.
    Scored: the ``k`` marker positions; the label at the ``i``-th marker is the ``i``-th data token
    in order of position (aligned with the marker itself, so the model answers while reading the
    markers). Everything else is IGNORE.
    Token accuracy: fraction of data tokens reproduced at the right marker. Sequence accuracy:
    fraction of examples whose ``k`` tokens are all reproduced.

    Mamba: T = 4096, vocab 16, 16 tokens (the ``full`` tier; ``T`` counts the markers here, and the
    vocabulary of 16 includes the blank and the marker, so 14 data symbols). ``generate(length=L)``
    makes the same task with a longer data region; there is no extrapolation axis, so
    ``test_lengths()`` is empty.
    """

    reference = "Gu & Dao 2023, Mamba: linear-time sequence modeling with selective state spaces"

    @dataclass(frozen=True)
    class Config:
        vocab_size: int = 16
        seq_len: int = 4096
        num_tokens: int = 16

        def __post_init__(self) -> None:
            check_int(NAME, "vocab_size", self.vocab_size, 4, "at least 2 data symbols + blank + marker")
            check_int(NAME, "num_tokens", self.num_tokens, 1)
            _check_length(self.seq_len, self.num_tokens, "seq_len")

    TIERS = {
        "smoke": {"config": {"vocab_size": 8, "seq_len": 24, "num_tokens": 4}},
        "quick": {"config": {"vocab_size": 16, "seq_len": 32, "num_tokens": 8}, "train": {"steps": 3000}},
        "full": {"config": {"vocab_size": 16, "seq_len": 4096, "num_tokens": 16}},
    }

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def n_labels(self) -> int:
        return self.config.vocab_size - 2

    def trivial_predictors(self) -> dict[str, TrivialPredictor]:
        return {**super().trivial_predictors(), "context majority": DataMajority(self.config.vocab_size)}

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        check_n(NAME, n)
        c = self.config
        T = c.seq_len if length is None else _check_length(length, c.num_tokens, "length")
        V, k = c.vocab_size, c.num_tokens
        dev = device_of(generator)
        region = T - k
        positions = random_subsets(n, region, k, generator).sort(dim=1).values
        data = torch.randint(0, V - 2, (n, k), generator=generator, device=dev)
        inputs = torch.full((n, T), V - 2, dtype=torch.long, device=dev)
        inputs.scatter_(1, positions, data)
        inputs[:, region:] = V - 1
        targets = torch.full((n, T), IGNORE, dtype=torch.long, device=dev)
        targets[:, region:] = data
        return Batch(inputs, targets)


class DataMajority(TrivialPredictor):
    """No order: at every marker, the data token that occurs most often in the data region."""

    def __init__(self, vocab_size: int) -> None:
        self.V = vocab_size

    def predict(self, batch: Batch) -> torch.Tensor:
        x = batch.inputs
        data = x < self.V - 2
        counts = torch.zeros(x.shape[0], self.V).scatter_add_(1, x, data.float())
        return counts.argmax(dim=1, keepdim=True).expand_as(x).clone()


def _check_length(T: object, k: int, what: str) -> int:
    return check_int(NAME, what, T, 2 * k, f"num_tokens={k} needs {k} data positions and {k} markers")
