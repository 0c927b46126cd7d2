"""The S5 word problem (Merrill, Petty & Sabharwal 2024, "The illusion of state in state-space
models"): track the composition of a stream of permutations of five objects (or of ``n_objects``:
S3 and S4 are the smaller word problems DeltaProduct's one-layer results are stated on)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from harness.registry import register_task
from harness.task import Batch, Task
from harness.tasks._common import check_int, check_n, check_test_lengths, device_of

NAME = "s5"

OBJECTS = (3, 4, 5)


@cache
def perms(n: int = 5) -> tuple[tuple[int, ...], ...]:
    """The ``n!`` elements of S_n as tuples ``p`` (``p[i]`` is the image of ``i``), in lexicographic
    order of ``itertools.permutations(range(n))``; token ``t`` is ``perms(n)[t]``; 0 is the identity."""
    return tuple(itertools.permutations(range(n)))


def generators(n: int = 5) -> tuple[tuple[int, ...], ...]:
    """A transposition and an n-cycle: they generate S_n (for S5 the word problem over them is still
    NC1-complete), but a model has only two transitions to learn (``tokens="generators"``)."""
    return (tuple([1, 0, *range(2, n)]), tuple([*range(1, n), 0]))


#: S5, as the module has always named it
PERMS: tuple[tuple[int, ...], ...] = perms(5)
N_ELEMENTS = len(PERMS)
GENERATORS: tuple[tuple[int, ...], ...] = generators(5)
TOKEN_SETS = ("all", "generators")


@cache
def _then_table(n: int = 5) -> Tensor:
    """``table[a, b]`` = token of "apply ``a``, then ``b``": the permutation ``i -> b[a[i]]``."""
    elements = perms(n)
    index = {p: t for t, p in enumerate(elements)}
    rows = [[index[tuple(pb[pa[i]] for i in range(n))] for pb in elements] for pa in elements]
    return torch.tensor(rows, dtype=torch.long)


def prefix_products(tokens: Tensor, n: int = 5) -> Tensor:
    """``out[:, t]`` = ``tokens[:, 0]`` then ``tokens[:, 1]`` ... then ``tokens[:, t]`` (as tokens of
    S_n).

    Hillis-Steele inclusive scan with the Cayley table: ``ceil(log2 T)`` vectorised table look-ups
    (composition is associative, so combining blocks of length ``d`` is valid).
    """
    table = _then_table(n).to(tokens.device).flatten()
    size = len(perms(n))
    x = tokens
    T = tokens.shape[1]
    d = 1
    while d < T:
        y = x.clone()
        y[:, d:] = table[x[:, :-d] * size + x[:, d:]]
        x = y
        d *= 2
    return x


@register_task(NAME, reference="Merrill et al. 2024, The illusion of state in state-space models (S5)")
class S5(Task):
    """The S5 word problem: output the running product of a sequence of permutations of 5 objects.

    Format: vocabulary = the 120 elements of S5; token ``t`` is the ``t``-th tuple of
    ``itertools.permutations(range(5))`` (lexicographic; token 0 is the identity; ``PERMS`` in this
    module), where ``p[i]`` is the image of ``i``. Inputs are ``T`` tokens drawn uniformly.
    Scored: every position. The label at position ``t`` is the prefix product
    ``s_t = g_0 ; g_1 ; ... ; g_t`` with the left-to-right convention "apply ``g_0`` first":
    ``s_t[i] = g_t[s_{t-1}[i]]`` (``s_0 = g_0``), encoded as a token of the same 120-element
    vocabulary. The problem is NC1-complete (Barrington 1989); Merrill et al. show that
    log-precision transformers and diagonal SSMs (in TC0) cannot solve it at every length unless
    TC0 = NC1, so accuracy at longer lengths separates true state tracking from shortcuts.
    Token accuracy: fraction of positions whose running product is correct. Sequence accuracy:
    fraction of sequences with every running product correct (equivalently, with the final state
    and all intermediate states tracked).
    ``tokens="generators"`` draws the inputs from a transposition and a 5-cycle only (tokens of the
    same 120-element vocabulary); the labels are still any of the 120 elements. The quick tier uses
    it so that the CPU budget goes to learning to track the state rather than 120 input embeddings.
    Length axis: train at ``seq_len``; ``generate(length=L)`` makes sequences of exactly ``L``
    tokens; ``test_lengths`` are longer lengths for extrapolation.

    ``n_objects`` (3, 4 or 5; default 5) makes it the word problem of S_n instead: vocabulary and
    labels are the ``n!`` elements of S_n, the generators a transposition and an n-cycle. A one-layer
    DeltaProduct with ``n_h`` Householder factors per token represents every element of S_n only
    when ``n_h >= n - 1`` (an element of S_n is a product of at most n - 1 transpositions; Siems et
    al. 2025), so S3 (``--task-set n_objects=3``) separates n_h = 1 from n_h = 2 at CPU budgets.
    """

    reference = "Merrill, Petty & Sabharwal 2024, The illusion of state in state-space models"

    @dataclass(frozen=True)
    class Config:
        seq_len: int = 32
        test_lengths: tuple[int, ...] = (64, 128, 256)
        tokens: str = "all"
        n_objects: int = 5

        def __post_init__(self) -> None:
            check_int(NAME, "seq_len", self.seq_len, 1)
            if self.tokens not in TOKEN_SETS:
                raise ValueError(f"s5: tokens={self.tokens!r}; allowed: {', '.join(TOKEN_SETS)}")
            if self.n_objects not in OBJECTS:
                raise ValueError(
                    f"s5: n_objects={self.n_objects!r} is not allowed; allowed: {', '.join(map(str, OBJECTS))}"
                )
            object.__setattr__(
                self, "test_lengths", check_test_lengths(NAME, self.test_lengths, self.seq_len)
            )

    TIERS = {
        "smoke": {"config": {"seq_len": 8, "test_lengths": (16,)}},
        "quick": {
            "config": {"seq_len": 16, "test_lengths": (32, 64), "tokens": "generators"},
            "train": {"steps": 2000},
        },
        "full": {"config": {"seq_len": 32, "test_lengths": (64, 128, 256)}},
    }

    @property
    def vocab_size(self) -> int:
        return len(perms(self.config.n_objects))

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def n_labels(self) -> int:
        return self.vocab_size

    def test_lengths(self) -> list[int]:
        return list(self.config.test_lengths)

    def generate(self, n: int, generator: torch.Generator, length: int | None = None) -> Batch:
        check_n(NAME, n)
        T = self.config.seq_len if length is None else check_int(NAME, "length", length, 1)
        dev = device_of(generator)
        k = self.config.n_objects
        if self.config.tokens == "all":
            tokens = torch.randint(0, self.vocab_size, (n, T), generator=generator, device=dev)
        else:
            ids = torch.tensor([perms(k).index(g) for g in generators(k)], device=dev)
            tokens = ids[torch.randint(0, len(ids), (n, T), generator=generator, device=dev)]
        return Batch(tokens, prefix_products(tokens, k))
