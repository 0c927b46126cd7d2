"""Modular arithmetic without brackets (Deletang et al. 2023; Grazzi et al. 2025): evaluate
``n0 op n1 op n2 ...`` in Z_5 with the usual precedence, at every prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.registry import register_task
from harness.task import IGNORE, Batch, Task
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

NAME = "modular-arithmetic"
MOD = 5
PLUS, MINUS, TIMES = MOD, MOD + 1, MOD + 2  # operator tokens
PAD = MOD + 3
OPERATORS = {PLUS: "+", MINUS: "-", TIMES: "*"}
TOKEN_OF = {v: k for k, v in OPERATORS.items()}

# Z_5^* is cyclic with generator 2: 2^0=1, 2^1=2, 2^2=4, 2^3=3. Products of nonzero residues are
# sums of discrete logs mod 4; a zero factor makes the product 0.
_EXP = (1, 2, 4, 3)
_LOG = (0, 0, 1, 3, 2)  # _LOG[0] is unused (zeros are counted separately)


def prefix_values(numbers: Tensor, ops: Tensor) -> Tensor:
    """Value mod 5 of ``numbers[:, 0] ops[:, 0] numbers[:, 1] ... numbers[:, i]`` for every ``i``.

    ``numbers`` ``[n, m]`` in ``0..4``; ``ops`` ``[n, m-1]`` operator tokens (``ops[:, i]`` sits
    between numbers ``i`` and ``i+1``). Standard precedence, left-associative: the expression is a
    signed sum of terms, each a product. Closed form with cumulative sums (no loop over positions):
    within the current term, the product is a segmented cumulative product (zero count and
    discrete-log sum since the term's start); the completed terms add up by an exclusive cumsum.
    """
    n, m = numbers.shape
    dev = numbers.device
    starts = torch.ones(n, m, dtype=torch.bool, device=dev)
    starts[:, 1:] = ops != TIMES
    sign = torch.ones(n, m, dtype=torch.long, device=dev)
    sign[:, 1:] = torch.where(ops == MINUS, -1, 1)
    idx = torch.arange(m, device=dev).expand(n, m)
    start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # current term's start

    def since_start(x: Tensor) -> Tensor:  # sum of x over the current term, inclusive
        c = x.cumsum(dim=1)
        return c - c.gather(1, start) + x.gather(1, start)

    zeros = since_start((numbers == 0).long())
    logs = since_start(torch.tensor(_LOG, device=dev)[numbers])
    term = torch.where(zeros > 0, 0, torch.tensor(_EXP, device=dev)[logs % 4]) * sign.gather(1, start)
    ends = torch.zeros(n, m, dtype=torch.bool, device=dev)
    ends[:, :-1] = starts[:, 1:]  # the next number starts a new term: this term is complete
    done = torch.where(ends, term, 0)
    return (done.cumsum(dim=1) - done + term) % MOD


@register_task(NAME, reference="Deletang et al. 2023, modular arithmetic (no brackets); Grazzi et al. 2025")
class ModularArithmetic(Task):
    """Modular arithmetic without brackets: the value mod 5 of an expression, at every number.

    Format: tokens ``0..4`` are numbers in Z_5, ``5 = '+'``, ``6 = '-'``, ``7 = '*'``, ``8`` = pad;
    vocab 9. A sequence alternates number, operator, number, ... (numbers at even positions,
    operators at odd ones, all uniform iid), e.g. ``2 + 1 - 3 * 4``. The length counts tokens; an
    even length ends with an operator (unscored). Training lengths are uniform over
    ``min_len .. max_len``, right-padded to ``max_len`` with the pad token (pads are never scored).
    Evaluation uses standard precedence (``*`` before ``+``/``-``, left-associative, as Python
    evaluates it and as in Deletang et al.: ``1 + 2 * 3 = 2``), then mod 5 (a non-negative residue).
    Scored (``scored="all"``, the default): every number position; the label at the number at
    position ``t`` is the value of the expression prefix ending there (tokens ``0..t``), mod 5.
    Operator positions are IGNORE. (The papers score only the final value; ``scored="final"``
    does that: only the last number of each sequence.) Note that under precedence the prefix value
    is not a running state of one residue: a pending product must be kept apart from the sum.
    Token accuracy: fraction of number positions whose prefix value is correct (at a test length
    this includes the in-distribution prefixes). Sequence accuracy: fraction of sequences with
    every prefix value correct (with ``scored="final"``: the final value).
    Length axis as for ``parity``: ``generate(length=L)`` makes expressions of exactly ``L`` tokens;
    Grazzi et al. train on 3-40 and test on 40-256 (the ``full`` tier: test at 64, 128, 256).
    """

    reference = "Deletang et al. 2023, Neural networks and the Chomsky hierarchy (modular arithmetic)"

    @dataclass(frozen=True)
    class Config(length_split_config(NAME)):  # type: ignore[misc]
        operators: str = "+-*"

        def __post_init__(self) -> None:
            super().__post_init__()
            ops = self.operators
            if not isinstance(ops, str) or not ops or set(ops) - set("+-*") or len(set(ops)) != len(ops):
                raise ValueError(
                    f"{NAME}: operators={ops!r} is not allowed; allowed: a non-empty string of distinct "
                    "characters from '+-*' (e.g. '+-*', '+-')"
                )

    #: quick draws only ``+`` and ``-`` (Deletang et al.'s ``operators`` option): counting mod 5, a
    #: group, which one layer with the right transitions solves (rotations: complex eigenvalues, or
    #: products of reflections across the number and operator tokens). With ``*`` the prefix value
    #: needs the sum and the pending product as a state, non-invertible under ``* 0``, beyond one
    #: layer at CPU budgets: ``--task-set operators=+-*`` (the ``full`` default) tests that.
    TIERS = {
        **LENGTH_SPLIT_TIERS,
        "quick": {
            **LENGTH_SPLIT_TIERS["quick"],
            "config": {**LENGTH_SPLIT_TIERS["quick"]["config"], "operators": "+-"},
            "train": {"steps": 3000},
        },
    }

    @property
    def vocab_size(self) -> int:
        return MOD + 4

    @property
    def seq_len(self) -> int:
        return self.config.max_len

    @property
    def n_labels(self) -> int:
        return MOD

    def test_lengths(self) -> list[int]:
        return list(self.config.test_lengths)

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        check_n(NAME, n)
        c = self.config
        dev = device_of(generator)
        T = c.max_len if length is None else check_int(NAME, "length", length, 1)
        m = (T + 1) // 2  # numbers
        numbers = torch.randint(0, MOD, (n, m), generator=generator, device=dev)
        allowed = torch.tensor([TOKEN_OF[o] for o in c.operators], device=dev)
        ops = allowed[torch.randint(0, len(allowed), (n, T - m), generator=generator, device=dev)]
        inputs = torch.empty(n, T, dtype=torch.long, device=dev)
        inputs[:, 0::2] = numbers
        inputs[:, 1::2] = ops
        targets = torch.full((n, T), IGNORE, dtype=torch.long, device=dev)
        targets[:, 0::2] = prefix_values(numbers, ops[:, : m - 1])
        if length is None:
            lengths = sample_lengths(n, c.min_len, c.max_len, generator)
        else:
            lengths = torch.full((n,), T, dtype=torch.long, device=dev)
        if c.scored == "final":
            targets = keep_only(targets, (lengths - 1) - (lengths - 1) % 2)  # the last number
        pad_beyond(inputs, targets, lengths, PAD)
        return Batch(inputs, targets)
