"""Property tests (hypothesis): contracts that must hold for every input, not only the chosen ones.

- Task generators: every config a task accepts (drawn around its smoke config) generates batches that
  keep the task contract: [n, T] int64, tokens and labels inside the vocabulary, labels only where
  scored (``IGNORE`` elsewhere), at least one scored position per example, the same batch for the same
  seed, at the training length and at every test length.
- Record schema: a record survives the store's round trip unchanged; its id does not depend on the
  order of the identity's keys; whatever bytes a record file holds, reading it gives a record or a
  ``CorruptRecord`` naming the file, never another error.
- The regression judge: a verdict does not depend on the unit of the samples, and swapping the sides
  mirrors it (slower <-> faster, worse <-> better).
"""

from __future__ import annotations

import dataclasses
import json
import string

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness import IGNORE, RegistryError, get_task
from harness.gate.verdicts import QUALITY, SPEED, VALUE, judge
from harness.registry import task_names
from harness.results import CorruptRecord, RecordStore, run_id_for

TASKS = task_names()  # every registered task, a new one included
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- task generators ---------------------------------------------------------------------------------
def _field_strategy(value):
    """Values around a config field's smoke value; fields of other types keep it."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.just(value), st.integers(1, 2 * value + 4))
    if isinstance(value, float):
        return st.one_of(st.just(value), st.floats(1e-3, 4.0))
    return st.just(value)


@st.composite
def task_configs(draw, name: str):
    cls = get_task(name).cls
    smoke = cls.make_config("smoke")
    overrides = {f.name: draw(_field_strategy(getattr(smoke, f.name))) for f in dataclasses.fields(smoke)}
    try:
        return cls.from_tier("smoke", overrides)
    except (ValueError, RegistryError):  # a config the task rejects: rejecting it is the contract
        assume(False)


def _check_batch(task, batch, n: int, T: int) -> None:
    for x in (batch.inputs, batch.targets):
        assert x.shape == (n, T) and x.dtype == torch.int64
    assert 0 <= int(batch.inputs.min()) and int(batch.inputs.max()) < task.vocab_size
    labels = batch.targets[batch.targets != IGNORE]
    assert labels.numel() > 0 and 0 <= int(labels.min()) and int(labels.max()) < task.vocab_size
    assert bool((batch.targets != IGNORE).any(dim=1).all()), "an example without a scored position"


@pytest.mark.parametrize("name", TASKS)
def test_every_accepted_config_generates_batches_that_keep_the_contract(name):
    @SETTINGS
    @given(task=task_configs(name), n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
    def check(task, n, seed):
        for length in [None, *task.test_lengths()]:
            a = task.generate(n, torch.Generator().manual_seed(seed), length=length)
            _check_batch(task, a, n, task.seq_len if length is None else length)
            b = task.generate(n, torch.Generator().manual_seed(seed), length=length)
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)

    check()


# -- record schema -----------------------------------------------------------------------------------
keys = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


@SETTINGS
@given(
    identity=st.dictionaries(keys, json_values, min_size=1, max_size=6),
    extra=st.dictionaries(keys, json_values, max_size=4),
)
def test_a_record_survives_the_store_unchanged(tmp_path_factory, identity, extra):
    """Any JSON content round-trips (a kind without a typed schema of its own: only the common part,
    kind / run_id / identity, is checked; training records' typed fields are tested in test_results)."""
    store = RecordStore(tmp_path_factory.mktemp("store"))
    extra = {k: v for k, v in extra.items() if k not in ("kind", "run_id", "identity", "schema")}
    identity = {k: v for k, v in identity.items() if k != "kind"}
    record = {**extra, "kind": "note", "run_id": run_id_for(identity), "identity": identity}
    store.save(record)
    assert store.get("note", record["run_id"]) == {"schema": 1, **record}


@SETTINGS
@given(identity=st.dictionaries(keys, json_values, min_size=2, max_size=6), data=st.data())
def test_a_run_id_ignores_the_order_of_keys(identity, data):
    shuffled = dict(data.draw(st.permutations(list(identity.items()))))
    assert run_id_for(shuffled) == run_id_for(identity)


@SETTINGS
@given(content=st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_file_is_a_record_or_reported_as_corrupt(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("store") / "runs" / "train" / "x.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    try:
        record = RecordStore(path.parents[2]).load_path(path)
    except CorruptRecord as e:
        assert str(path) in str(e)
    else:
        assert isinstance(record, dict) and "run_id" in record and "kind" in record


# -- the regression judge ----------------------------------------------------------------------------
samples = st.lists(st.floats(0.1, 10.0), min_size=1, max_size=12)


@SETTINGS
@given(base=samples, new=samples, exponent=st.integers(-20, 20))
def test_a_speed_verdict_does_not_depend_on_the_unit(base, new, exponent):
    unit = 2.0**exponent  # exact in floating point: a change of unit, not of rounding
    a = judge("x", SPEED, base, new)
    b = judge("x", SPEED, [v * unit for v in base], [v * unit for v in new])
    assert a.status == b.status


MIRROR = {"slower": "faster", "faster": "slower", "worse": "better", "better": "worse", "ok": "ok"}


@SETTINGS
@given(base=samples, new=samples, kind=st.sampled_from([SPEED, VALUE, QUALITY]))
def test_swapping_the_sides_mirrors_the_verdict(base, new, kind):
    if kind != SPEED:  # one reading a side
        base, new = base[:1], new[:1]
    forward, backward = judge("x", kind, base, new), judge("x", kind, new, base)
    assert backward.status == MIRROR[forward.status]
