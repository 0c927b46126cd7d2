"""Parity of a bit string (Deletang et al. 2023; Grazzi et al. 2025), with a label at every prefix."""

from __future__ import annotations

import torch

from harness.registry import register_task
from harness.task import Batch, Task
from harness.tasks._common import (
    LENGTH_SPLIT_TIERS,
    check_int,
    check_n,
    device_of,
    keep_only,
    length_split_config,
    pad_beyond,
    sample_lengths,
)

NAME = "parity"
PAD = 2


@register_task(
    NAME, reference="Grazzi et al. 2025, negative eigenvalues for state tracking; Deletang et al. 2023"
)
class Parity(Task):
    """Parity: the running XOR of a bit string.

    Format: tokens ``0`` and ``1`` (bits, uniform iid) and ``2`` (pad); vocab 3. Training examples
    have lengths uniform over ``min_len .. max_len`` and are right-padded to ``max_len`` with the
    pad token (pads are never scored; a causal model never sees a pad before a real bit).
    Scored (``scored="all"``, the default): every real position; the label at position ``t`` is
    the parity of bits ``0 .. t`` (``sum mod 2``). This gives a richer training signal than the
    final bit alone (the papers score only the final parity; ``scored="final"`` does that: only the
    last real position is scored).
    Token accuracy: fraction of real positions whose prefix parity is correct (at a test length
    this includes the in-distribution prefixes up to ``max_len``). Sequence accuracy: fraction of
    sequences with every prefix parity correct, i.e. the final parity and all the earlier ones —
    the strict extrapolation measure. With ``scored="final"`` both equal final-answer accuracy.
    Length axis: ``generate(length=L)`` makes strings of exactly ``L`` bits, unpadded.
    ``test_lengths`` are the extrapolation lengths. Grazzi et al. train on 3-40 and test on 40-256
    (the ``full`` tier: test at 64, 128, 256).
    """

    reference = "Grazzi et al. 2025, Unlocking state-tracking in linear RNNs through negative eigenvalues"

    Config = length_split_config(NAME)
    TIERS = LENGTH_SPLIT_TIERS

    @property
    def vocab_size(self) -> int:
        return 3

    @property
    def seq_len(self) -> int:
        return self.config.max_len

    @property
    def n_labels(self) -> int:
        return 2

    def test_lengths(self) -> list[int]:
        return list(self.config.test_lengths)

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        check_n(NAME, n)
        c = self.config
        dev = device_of(generator)
        T = c.max_len if length is None else check_int(NAME, "length", length, 1)
        bits = torch.randint(0, 2, (n, T), generator=generator, device=dev)
        targets = bits.cumsum(dim=1) % 2
        if length is None:
            lengths = sample_lengths(n, c.min_len, c.max_len, generator)
        else:
            lengths = torch.full((n,), T, dtype=torch.long, device=dev)
        if c.scored == "final":
            targets = keep_only(targets, lengths - 1)
        pad_beyond(bits, targets, lengths, PAD)
        return Batch(bits, targets)
