"""Training to a verdict: early stopping on valid, steps to solve, and held-out sets disjoint from
the training stream for every task."""

from __future__ import annotations

import pytest
import torch

from harness.registry import get_task, task_names
from harness.splits import held_out, row_hashes, split_seed, train_generator
from harness.train import RunSpec, execute, resolve, task_tier
from harness.training import make_splits


def _run(**train):
    spec = RunSpec(candidate="toy-ema", task="toy-last", tier="smoke", lr=3e-3, train_overrides=train)
    return execute(resolve(spec))


def test_training_stops_once_valid_reaches_the_threshold(installed_plugin):
    rec = _run(steps=400, eval_every=20, n_check=32, solve_threshold=0.9)
    assert rec["status"] == "ok" and rec["solved"]
    assert rec["steps_to_solve"] == rec["steps_done"] < 400
    assert rec["steps_to_solve"] % 20 == 0
    assert rec["check_curve"][-1][0] == rec["steps_to_solve"]
    assert rec["check_curve"][-1][1] >= 0.9 and all(s < 0.9 for _, s in rec["check_curve"][:-1])


def test_an_unsolved_run_trains_its_whole_budget(installed_plugin):
    rec = _run(steps=40, eval_every=20, n_check=32, solve_threshold=1.5)
    assert rec["steps_done"] == 40 and rec["steps_to_solve"] is None and not rec["solved"]
    assert [s for s, _ in rec["check_curve"]] == [20, 40]


def _rows(x: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in x.tolist()}


@pytest.mark.parametrize("task_name", sorted(task_names()))
def test_held_out_sets_share_no_example_with_the_training_stream(task_name):
    """Checked with exact rows (not the hashes the splits use): <= 1 % is the contract; it is 0."""
    task = get_task(task_name).cls.from_tier("quick")
    tier = task_tier(task_name, "quick", {"n_valid": 256, "n_test": 256})
    gen = train_generator(task_name, 0)
    seen = set()
    for _ in range(tier.steps):
        seen |= _rows(task.generate(tier.batch_size, gen).inputs)
    splits = make_splits(task, task_name, tier, 0)
    for data in (splits.valid, splits.test):
        rows = [r for b in data.batches for r in b.inputs.tolist()]
        assert len(rows) == data.n
        assert sum(tuple(r) in seen for r in rows) == 0


def test_without_deduplication_short_tasks_would_test_on_training_examples():
    """Why the splits deduplicate: parity's short strings recur in the training stream."""
    task = get_task("parity").cls.from_tier("quick")
    tier = task_tier("parity", "quick")
    gen = train_generator("parity", 0)
    seen = set()
    for _ in range(tier.steps):
        seen |= _rows(task.generate(tier.batch_size, gen).inputs)
    raw = task.generate(512, torch.Generator().manual_seed(split_seed("parity", "test", 0)))
    overlap = sum(r in seen for r in _rows(raw.inputs)) / 512
    assert overlap > 0.05


def test_row_hashes_tell_rows_apart():
    x = torch.randint(0, 3, (4096, 20), generator=torch.Generator().manual_seed(0))
    h = row_hashes(x)
    assert len(torch.unique(h)) == len(_rows(x))


def test_a_training_stream_that_covers_the_input_space_is_an_error():
    from harness.splits import HeldOutExhausted

    task = get_task("parity").cls.from_tier("quick", {"min_len": 3, "max_len": 4, "test_lengths": (8,)})
    everything = row_hashes(
        torch.cat([task.generate(512, torch.Generator().manual_seed(s)).inputs for s in range(4)])
    )
    with pytest.raises(HeldOutExhausted, match="too small"):
        held_out(task, 64, 123, 64, exclude=torch.unique(everything))
