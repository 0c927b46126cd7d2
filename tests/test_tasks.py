"""Quality tasks: each generator is checked against an independent (plain Python) computation of
its labels, for determinism, for shapes at every tier and test length, and for config errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness import IGNORE, get_task
from harness.registry import task_names
from harness.tasks._common import power_law_slots, random_subsets
from harness.tasks.modular_arithmetic import prefix_values

TASKS = ["mqar", "selective-copy", "s5", "associative-recall", "parity", "modular-arithmetic"]


def make(name: str, tier: str = "quick", **overrides):
    return get_task(name).cls.from_tier(tier, overrides)


def gen(task, n: int = 64, seed: int = 0, length: int | None = None):
    b = task.generate(n, torch.Generator().manual_seed(seed), length=length)
    return b.inputs.tolist(), b.targets.tolist()


def scored(row: list[int]) -> list[int]:
    return [t for t, y in enumerate(row) if y != IGNORE]


def test_all_registered():
    assert set(TASKS) <= set(task_names())
    for name in TASKS:
        cls = get_task(name).cls
        assert cls.name == name and cls.__doc__ and "accuracy" in cls.__doc__.lower()
        assert set(cls.TIERS) == {"smoke", "quick", "full"}


# -- shapes, ranges, determinism at every tier -------------------------------------------------


@pytest.mark.parametrize("tier", ["smoke", "quick", "full"])
@pytest.mark.parametrize("name", TASKS)
def test_shapes_every_tier_and_test_length(name, tier):
    task = make(name, tier)
    assert isinstance(task.vocab_size, int) and isinstance(task.seq_len, int)
    for L in [None, *task.test_lengths()]:
        assert L is None or L > task.seq_len
        b = task.generate(3, torch.Generator().manual_seed(1), length=L)
        T = task.seq_len if L is None else L
        for x in (b.inputs, b.targets):
            assert x.shape == (3, T) and x.dtype == torch.int64 and x.is_contiguous()
        assert 0 <= int(b.inputs.min()) and int(b.inputs.max()) < task.vocab_size
        real = b.targets[b.targets != IGNORE]
        assert real.numel() > 0 and 0 <= int(real.min()) and int(real.max()) < task.vocab_size
        assert bool((b.targets != IGNORE).any(dim=1).all()), "every example has a scored position"


@pytest.mark.parametrize("name", TASKS)
def test_deterministic_and_free_of_global_rng(name):
    task = make(name)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = task.generate(16, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before), "the global RNG was used"
    torch.manual_seed(2)
    b = task.generate(16, torch.Generator().manual_seed(5))
    c = task.generate(16, torch.Generator().manual_seed(6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    for L in task.test_lengths():
        x = task.generate(4, torch.Generator().manual_seed(3), length=L)
        y = task.generate(4, torch.Generator().manual_seed(3), length=L)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)


# -- MQAR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("random_filler", [True, False])
def test_mqar_labels_match_context(random_filler):
    task = make("mqar", random_filler=random_filler)
    V, k, T = task.vocab_size, task.config.num_pairs, task.seq_len
    xs, ys = gen(task)
    for x, y in zip(xs, ys):
        keys, vals = x[0 : 2 * k : 2], x[1 : 2 * k : 2]
        assert all(1 <= key < V // 2 for key in keys) and len(set(keys)) == k
        assert all(V // 2 <= v < V for v in vals) and len(set(vals)) == k
        binding = dict(zip(keys, vals))
        pos = scored(y)
        assert len(pos) == k and all(p >= 2 * k and p % 2 == 0 for p in pos)
        assert sorted(x[p] for p in pos) == sorted(keys), "every key is queried exactly once"
        assert all(y[p] == binding[x[p]] for p in pos)
        if not random_filler:
            assert all(x[t] == 0 for t in range(2 * k, T) if t not in pos)
    if random_filler:  # fillers are random tokens, not a constant
        fill = [x[t] for x, y in zip(xs, ys) for t in range(2 * k + 1, T, 2)]
        assert len(set(fill)) > V // 2


@pytest.mark.parametrize("grid", [(64, 4), (128, 8), (256, 16), (512, 64)])
def test_mqar_paper_grid(grid):
    T, k = grid
    task = make("mqar", "full", seq_len=T, num_pairs=k)
    b = task.generate(2, torch.Generator().manual_seed(0))
    assert b.inputs.shape == (2, T) and int((b.targets != IGNORE).sum()) == 2 * k
    assert task.vocab_size == 8192


def test_mqar_power_law_slots():
    # the first draw follows p(s) ~ (s+1)^(alpha-1) exactly (Zoology's law); later draws avoid it
    space, alpha, n = 8, 0.1, 50_000
    slots = power_law_slots(n, space, 3, alpha, torch.Generator().manual_seed(0))
    p = torch.arange(1, space + 1, dtype=torch.float64) ** (alpha - 1)
    p /= p.sum()
    freq = torch.bincount(slots[:, 0], minlength=space).double() / n
    assert torch.allclose(freq, p, atol=0.01), (freq, p)
    assert bool((slots[:, 0] != slots[:, 1]).all() and (slots[:, 1] != slots[:, 2]).all())
    assert bool((slots[:, 0] != slots[:, 2]).all())

    # in the task, queries crowd the early slots for small alpha and not for alpha = 1
    def early_share(a: float) -> float:
        task = make("mqar", alpha=a, seq_len=64)  # quick fills every slot at T=32
        b = task.generate(2000, torch.Generator().manual_seed(1))
        pos = (b.targets != IGNORE).nonzero()[:, 1]
        k = task.config.num_pairs
        slot = (pos - 2 * k) // 2
        return float((slot < (task.seq_len - 2 * k) // 4).double().mean())

    assert early_share(0.01) > 0.6 and abs(early_share(1.0) - 0.5) < 0.05


def test_random_subsets_uniform():
    n, pop, k = 60_000, 5, 2
    s = random_subsets(n, pop, k, torch.Generator().manual_seed(0))
    assert bool((s[:, 0] != s[:, 1]).all()) and int(s.min()) >= 0 and int(s.max()) < pop
    counts = torch.bincount(s[:, 0] * pop + s[:, 1], minlength=pop * pop).double() / n
    ordered_pairs = [a * pop + b for a, b in itertools.permutations(range(pop), 2)]
    assert torch.allclose(counts[ordered_pairs], torch.full((20,), 1 / 20, dtype=torch.float64), atol=0.006)
    full = random_subsets(100, 7, 7, torch.Generator().manual_seed(1))  # k = population: permutations
    assert bool((full.sort(dim=1).values == torch.arange(7)).all())


# -- selective copy -----------------------------------------------------------------------------


def test_selective_copy_labels_are_data_in_order():
    task = make("selective-copy")
    V, k, T = task.vocab_size, task.config.num_tokens, task.seq_len
    blank, marker = V - 2, V - 1
    xs, ys = gen(task)
    for x, y in zip(xs, ys):
        data = [tok for tok in x[: T - k] if tok != blank]
        assert len(data) == k and all(0 <= tok < V - 2 for tok in data)
        assert x[T - k :] == [marker] * k and marker not in x[: T - k]
        assert scored(y) == list(range(T - k, T))
        assert y[T - k :] == data
    # positions are spread over the whole data region, not bunched at one end
    first = [next(t for t, tok in enumerate(x) if tok != blank) for x in xs]
    last = [max(t for t, tok in enumerate(x[: T - k]) if tok != blank) for x in xs]
    assert min(first) < (T - k) // 4 and max(last) > 3 * (T - k) // 4


def test_selective_copy_longer_length():
    task = make("selective-copy")
    b = task.generate(4, torch.Generator().manual_seed(0), length=128)
    k = task.config.num_tokens
    assert b.inputs.shape == (4, 128) and bool((b.targets[:, -k:] != IGNORE).all())


# -- S5 -----------------------------------------------------------------------------------------


def test_s5_prefix_products_by_composing_permutations():
    perms = list(itertools.permutations(range(5)))  # the documented token order
    index = {p: i for i, p in enumerate(perms)}
    assert perms[0] == (0, 1, 2, 3, 4) and len(index) == 120
    task = make("s5")
    assert task.vocab_size == 120
    for L in [None, *task.test_lengths()]:
        xs, ys = gen(task, n=16, length=L)
        for x, y in zip(xs, ys):
            state = (0, 1, 2, 3, 4)
            for t, tok in enumerate(x):
                g = perms[tok]
                state = tuple(g[state[i]] for i in range(5))  # apply the state so far, then g
                assert y[t] == index[state], (t, x[: t + 1])
    # the convention matters: S5 is not commutative, so the reverse order would disagree
    a, b = index[(1, 0, 2, 3, 4)], index[(0, 2, 1, 3, 4)]
    from harness.tasks.s5 import prefix_products

    ab = prefix_products(torch.tensor([[a, b]]))[0, 1].item()
    assert perms[ab] == tuple(perms[b][perms[a][i]] for i in range(5)) != perms[index[(0, 1, 2, 3, 4)]]
    assert ab != prefix_products(torch.tensor([[b, a]]))[0, 1].item()


# -- associative recall -------------------------------------------------------------------------


def test_associative_recall_answer():
    task = make("associative-recall")
    V, T = task.vocab_size, task.seq_len
    nk = (V - 1) // 2
    xs, ys = gen(task, n=256)
    maps = set()
    for x, y in zip(xs, ys):
        pairs = list(zip(x[0 : T - 2 : 2], x[1 : T - 2 : 2]))
        binding: dict[int, int] = {}
        for key, val in pairs:
            assert 0 <= key < nk <= val < V - 1
            assert binding.setdefault(key, val) == val, "a key keeps its value within an example"
        assert x[T - 2] == V - 1 and x[T - 1] in binding
        assert scored(y) == [T - 1] and y[T - 1] == binding[x[T - 1]]
        maps.add(tuple(sorted(binding.items())))
    assert len(maps) > 200, "the map is fresh per example"
    b = task.generate(4, torch.Generator().manual_seed(0), length=T + 20)
    assert b.inputs.shape == (4, T + 20) and bool((b.inputs[:, -2] == V - 1).all())


# -- parity -------------------------------------------------------------------------------------


def real_length(x: list[int], y: list[int], pad: int) -> int:
    """Length before the right padding; checks that pads are only at the end and unscored."""
    n = sum(t != pad for t in x)
    assert pad not in x[:n] and all(t == pad for t in x[n:]) and all(v == IGNORE for v in y[n:])
    return n


def test_parity_prefix_labels_and_lengths():
    task = make("parity")
    lo, hi = task.config.min_len, task.config.max_len
    xs, ys = gen(task, n=400)
    lengths = set()
    for x, y in zip(xs, ys):
        n = real_length(x, y, 2)
        lengths.add(n)
        assert lo <= n <= hi and set(x[:n]) <= {0, 1}
        assert y[:n] == [sum(x[: t + 1]) % 2 for t in range(n)]
    assert lo in lengths and hi in lengths and len(lengths) == hi - lo + 1
    for L in task.test_lengths():
        xs, ys = gen(task, n=8, length=L)
        for x, y in zip(xs, ys):
            assert 2 not in x and y == [sum(x[: t + 1]) % 2 for t in range(L)]


@pytest.mark.parametrize("name", ["parity", "modular-arithmetic"])
def test_final_scoring(name):
    full = make(name)
    final = make(name, scored="final")
    for L in [None, *final.test_lengths()]:
        a = full.generate(64, torch.Generator().manual_seed(4), length=L)
        b = final.generate(64, torch.Generator().manual_seed(4), length=L)
        assert torch.equal(a.inputs, b.inputs)
        for ya, yb in zip(a.targets.tolist(), b.targets.tolist()):
            assert scored(yb) == scored(ya)[-1:] and yb[scored(ya)[-1]] == ya[scored(ya)[-1]]


# -- modular arithmetic -------------------------------------------------------------------------

OPS = {5: "+", 6: "-", 7: "*"}


def evaluate_prefix(tokens: list[int]) -> int:
    return eval("".join(str(t) if t < 5 else OPS[t] for t in tokens)) % 5  # noqa: S307 (digits/ops only)


def test_modular_arithmetic_against_python_eval():
    task = make("modular-arithmetic")
    lo, hi = task.config.min_len, task.config.max_len
    xs, ys = gen(task, n=300)
    lengths = set()
    for x, y in zip(xs, ys):
        n = real_length(x, y, 8)
        lengths.add(n)
        assert lo <= n <= hi
        assert all(0 <= t < 5 for t in x[0:n:2]) and all(t in OPS for t in x[1:n:2])
        assert scored(y) == list(range(0, n, 2))
        assert all(y[t] == evaluate_prefix(x[: t + 1]) for t in range(0, n, 2))
    assert lo in lengths and hi in lengths
    for L in task.test_lengths():
        xs, ys = gen(task, n=8, length=L)
        for x, y in zip(xs, ys):
            assert 8 not in x and all(y[t] == evaluate_prefix(x[: t + 1]) for t in range(0, L, 2))


def test_modular_arithmetic_precedence_examples():
    # Deletang et al.'s examples: 1 + 2 * 3 = 2, 1 - 1 - 1 = 4, 0 * 1 + 4 * 3 - 2 = 0 (mod 5)
    P, M, X = 5, 6, 7
    cases = [
        ([1, 2, 3], [P, X], [1, 3, 2]),
        ([1, 1, 1], [M, M], [1, 0, 4]),
        ([0, 1, 4, 3, 2], [X, P, X, M], [0, 0, 4, 2, 0]),
        ([3, 4, 2, 0, 2], [M, X, X, P], [3, 4, 0, 3, 0]),
    ]
    for nums, ops, want in cases:
        got = prefix_values(torch.tensor([nums]), torch.tensor([ops]))[0].tolist()
        assert got == want, (nums, ops, got)


# -- config and argument errors -----------------------------------------------------------------

BAD_CONFIGS = [
    ("mqar", {"num_pairs": 20}, "seq_len=32 is too small"),
    ("mqar", {"vocab_size": 16}, "vocab_size=16 is too small"),
    ("mqar", {"seq_len": 63, "num_pairs": 4}, "must be even"),
    ("mqar", {"alpha": 0.0}, "alpha=0.0"),
    ("mqar", {"num_pairs": 0}, "num_pairs=0"),
    ("mqar", {"random_filler": "yes"}, "random_filler"),
    ("selective-copy", {"seq_len": 15}, "seq_len=15 is too small"),
    ("selective-copy", {"vocab_size": 3}, "vocab_size=3"),
    ("selective-copy", {"num_tokens": 2.5}, "must be an int"),
    ("s5", {"seq_len": 0}, "seq_len=0"),
    ("s5", {"test_lengths": (16,)}, "longer than training length 16"),
    ("s5", {"test_lengths": 32}, "sequence of ints"),
    ("associative-recall", {"seq_len": 31}, "must be even"),
    ("associative-recall", {"seq_len": 2}, "seq_len=2 is too small"),
    ("associative-recall", {"vocab_size": 3}, "vocab_size=3"),
    ("parity", {"min_len": 0}, "min_len=0"),
    ("parity", {"min_len": 10, "max_len": 5}, "max_len=5 is too small"),
    ("parity", {"test_lengths": (20, 64)}, "longer than training length 20"),
    ("parity", {"scored": "last"}, "scored='last'"),
    ("modular-arithmetic", {"max_len": True}, "must be an int"),
    ("modular-arithmetic", {"test_lengths": (40, 40)}, "duplicates"),
    ("modular-arithmetic", {"scored": None}, "allowed: 'all' or 'final'"),
]


@pytest.mark.parametrize("name,overrides,message", BAD_CONFIGS)
def test_bad_config(name, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make(name, **overrides)


BAD_LENGTHS = [
    ("mqar", 63),
    ("mqar", 30),
    ("selective-copy", 15),
    ("s5", 0),
    ("associative-recall", 33),
    ("parity", 0),
    ("modular-arithmetic", -3),
]


@pytest.mark.parametrize("name,length", BAD_LENGTHS)
def test_bad_generate_arguments(name, length):
    task = make(name)
    with pytest.raises(ValueError, match=f"length={length}"):
        task.generate(2, torch.Generator().manual_seed(0), length=length)
    with pytest.raises(ValueError, match="n \\(number of examples\\)"):
        task.generate(0, torch.Generator().manual_seed(0))


def test_s5_generators_only_uses_two_tokens_and_labels_compose():
    import itertools

    from harness.tasks.s5 import GENERATORS, PERMS, S5

    task = S5(S5.Config(seq_len=12, test_lengths=(24,), tokens="generators"))
    b = task.generate(64, torch.Generator().manual_seed(0))
    assert set(b.inputs.unique().tolist()) == {PERMS.index(g) for g in GENERATORS}
    for row_in, row_out in zip(b.inputs.tolist(), b.targets.tolist()):
        state = tuple(range(5))
        for tok, lab in zip(row_in, row_out):
            g = PERMS[tok]
            state = tuple(g[state[i]] for i in range(5))
            assert PERMS[lab] == state
    # the two generators generate all of S5
    reached = {tuple(range(5))}
    for _ in range(12):
        reached |= {tuple(g[p[i]] for i in range(5)) for p in reached for g in GENERATORS}
    assert len(reached) == len(list(itertools.permutations(range(5))))
    with pytest.raises(ValueError, match="tokens='some'"):
        S5.Config(tokens="some")


@pytest.mark.parametrize("n", [3, 4])
def test_smaller_symmetric_groups_compose_and_are_generated(n):
    from harness.tasks.s5 import S5, generators, perms

    task = S5(S5.Config(seq_len=10, test_lengths=(20,), tokens="generators", n_objects=n))
    assert task.vocab_size == task.n_labels == len(perms(n))
    b = task.generate(32, torch.Generator().manual_seed(1))
    for row_in, row_out in zip(b.inputs.tolist(), b.targets.tolist()):
        state = tuple(range(n))
        for tok, lab in zip(row_in, row_out):
            g = perms(n)[tok]
            state = tuple(g[state[i]] for i in range(n))
            assert perms(n)[lab] == state
    reached = {tuple(range(n))}
    for _ in range(8):
        reached |= {tuple(g[p[i]] for i in range(n)) for p in reached for g in generators(n)}
    assert len(reached) == len(perms(n))
    with pytest.raises(ValueError, match="n_objects=6"):
        S5.Config(n_objects=6)
