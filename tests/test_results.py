"""The results store: atomic writes, reuse, resume after interruption, corrupt files reported."""

from __future__ import annotations

import json

import pytest
import torch

from harness import Mixer, register_candidate, registry
from harness import sweep as sweep_mod
from harness.results import RecordError, RecordStore, atomic_write_json, run_id_for
from harness.train import resolve


def test_run_id_ignores_key_order_and_changes_with_values():
    a = run_id_for({"x": 1, "y": {"b": 2, "a": 1}})
    assert a == run_id_for({"y": {"a": 1, "b": 2}, "x": 1})
    assert a != run_id_for({"x": 2, "y": {"b": 2, "a": 1}})


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"ok": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"ok": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"ok": 1}  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def _record(**identity) -> dict:
    """A minimal record that fits the schema (a kind the schema only checks in common)."""
    identity = {"kind": "note", **identity}
    return {"kind": "note", "run_id": run_id_for(identity), "identity": identity}


def test_corrupt_record_is_reported_by_path_and_set_aside(tmp_path):
    store = RecordStore(tmp_path)
    good = _record(n=1)
    store.save(good)
    bad = store.path_for("note", "bbbb")
    bad.write_text('{"kind": "note", "run_id": "bbbb", "ide')
    records, corrupt = store.records("note")
    assert [r["run_id"] for r in records] == [good["run_id"]]
    assert len(corrupt) == 1 and corrupt[0].path == bad
    assert str(bad) in str(corrupt[0]) and "not valid JSON" in str(corrupt[0])
    assert not bad.exists() and corrupt[0].moved_to == bad.with_name("bbbb.json.corrupt")
    assert corrupt[0].moved_to.read_text().startswith('{"kind"')  # set aside, never deleted
    assert store.get("note", "bbbb") is None  # gone from the store: its run is redone


def _train_record(**fields) -> dict:
    identity = {"kind": "train", "candidate": "a", "task": "t", "tier": "smoke", "seed": 0, "lr": 0.003}
    rec = {"kind": "train", "run_id": run_id_for(identity), "identity": identity, **identity}
    return {**rec, "status": "ok", "valid": {"token_acc": 0.5, "seq_acc": 0.0}, **fields}


def test_the_writer_and_the_reader_share_one_schema(tmp_path):
    store = RecordStore(tmp_path)
    with pytest.raises(RecordError, match="needs 'test' scores"):
        store.save(_train_record())  # status ok, no test scores: a bug in the writer, refused
    with pytest.raises(RecordError, match="test.token_acc must be a number"):
        store.save(_train_record(test={"token_acc": "0.9", "seq_acc": 0.0}))
    good = _train_record(test={"token_acc": 0.9, "seq_acc": 0.0})
    path = store.save(good)
    assert store.get("train", good["run_id"])["test"]["token_acc"] == 0.9
    # the same file read back with the wrong shape is set aside, not trusted
    path.write_text(json.dumps({**good, "valid": None}))
    assert store.get("train", good["run_id"]) is None
    assert "needs 'valid' scores" in store.set_aside[-1].reason and not path.exists()


def test_a_record_whose_content_is_another_runs_is_set_aside(tmp_path):
    store = RecordStore(tmp_path)
    mine, other = _record(n=1), _record(n=2)
    seen = []
    store.on_corrupt = seen.append
    store.path_for("note", mine["run_id"]).parent.mkdir(parents=True)
    store.path_for("note", mine["run_id"]).write_text(json.dumps({**other, "run_id": mine["run_id"]}))
    assert store.get("note", mine["run_id"]) is None
    assert len(seen) == 1 and "not the hash of the record's identity" in seen[0].reason
    store.path_for("note", mine["run_id"]).write_text(json.dumps(other))  # copied under another name
    assert store.get("note", mine["run_id"]) is None
    assert "does not match its file name" in seen[1].reason
    assert seen[1].moved_to.name.endswith(".corrupt.1")  # the first one set aside is kept too


def test_find_by_prefix(tmp_path):
    store = RecordStore(tmp_path)
    rec = _record(n=2)
    store.save(rec)
    assert store.find(rec["run_id"][:5])["run_id"] == rec["run_id"]
    with pytest.raises(KeyError, match="no record"):
        store.find("fff")
    for bad in ("*", "../../x", "a/b", "zz"):
        with pytest.raises(KeyError, match="not a run id"):
            store.find(bad)


def _plan(**kw):
    return sweep_mod.plan(["toy-ema"], ["toy-last"], "smoke", **kw)


def _ids(cells) -> list[str]:
    return [resolve(s).run_id for c in cells for s in c.selection_specs()]


def test_sweep_reuses_records_and_force_reruns(installed_plugin, tmp_path):
    store = RecordStore(tmp_path)
    first = sweep_mod.run_sweep(_plan(n_seeds=2), store, progress=False)
    assert (first.ran, first.reused) == (2, 0)
    again = sweep_mod.run_sweep(_plan(n_seeds=2), store, progress=False)
    assert (again.ran, again.reused) == (0, 2)
    assert [r["test"] for r in again.records] == [r["test"] for r in first.records]
    forced = sweep_mod.run_sweep(_plan(n_seeds=2), store, force=True, progress=False)
    assert forced.ran == 2


def test_same_inputs_same_result_on_cpu(installed_plugin, tmp_path):
    a = sweep_mod.run_sweep(_plan(), RecordStore(tmp_path / "a"), progress=False).records[0]
    b = sweep_mod.run_sweep(_plan(), RecordStore(tmp_path / "b"), progress=False).records[0]
    assert a["run_id"] == b["run_id"]
    assert a["loss_curve"] == b["loss_curve"] and a["test"] == b["test"]


def test_interrupted_sweep_resumes_where_it_stopped(installed_plugin, tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    runs = _plan(n_seeds=3)
    real_execute = sweep_mod.execute
    calls = []

    def interrupt_on_second(run):
        calls.append(run.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_execute(run)

    monkeypatch.setattr(sweep_mod, "execute", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(runs, store, progress=False)
    assert len(list(store.runs.glob("train/*.json"))) == 1
    monkeypatch.setattr(sweep_mod, "execute", real_execute)
    resumed = sweep_mod.run_sweep(runs, store, progress=False)
    assert (resumed.ran, resumed.reused) == (2, 1)


class _Linear(Mixer):
    """A position-wise map: enough of a mixer for the broken variants below."""

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model)
        self.w = torch.nn.Linear(d_model, d_model)

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, 1, device=device, dtype=dtype)

    def step(self, x_t, state):
        return self(x_t[:, None])[:, 0], state


@pytest.fixture
def broken_candidates():
    @register_candidate("test-raises", groups=("test-broken",))
    class Raises(_Linear):
        def forward(self, x):
            raise RuntimeError("kernel exploded")

    @register_candidate("test-nan", groups=("test-broken",))
    class NaN(_Linear):
        def forward(self, x):
            return self.w(x) * float("nan")

    yield
    registry.unregister("test-raises")
    registry.unregister("test-nan")


def test_failures_are_results_and_the_sweep_goes_on(installed_plugin, broken_candidates, tmp_path):
    """How a sweep treats runs that raise or diverge (the conformance gate, which would stop these
    two before training, is off here: a conforming candidate can still fail on a task)."""
    store = RecordStore(tmp_path)
    runs = sweep_mod.plan(["test-raises", "test-nan", "toy-ema"], ["toy-last"], "smoke")
    res = sweep_mod.run_sweep(runs, store, progress=False, check=False)
    status = {r["candidate"]: r["status"] for r in res.records}
    assert status == {"test-raises": "failed", "test-nan": "diverged", "toy-ema": "ok"}
    failed = next(r for r in res.records if r["status"] == "failed")
    assert "kernel exploded" in failed["error"]
    # failed runs are retried next time, diverged ones are results and reused
    again = sweep_mod.run_sweep(runs, store, progress=False, check=False)
    assert again.ran == 1 and again.reused == 2


def test_the_gate_keeps_nonconforming_candidates_out_of_training(
    installed_plugin, broken_candidates, tmp_path
):
    store = RecordStore(tmp_path)
    runs = sweep_mod.plan(["test-raises", "test-nan", "toy-ema"], ["toy-last"], "smoke")
    res = sweep_mod.run_sweep(runs, store, progress=False)
    assert sorted(res.nonconforming) == ["test-nan", "test-raises"]
    assert [r["candidate"] for r in res.records] == ["toy-ema"]


def test_cli_exit_code_says_something_failed(installed_plugin, broken_candidates, tmp_path, capsys):
    from harness.cli import main

    rc = main(
        [
            "compare",
            "--candidates",
            "test-raises,toy-ema",
            "--baselines",
            "",
            "--tasks",
            "toy-last",
            "--tier",
            "smoke",
            "--results-dir",
            str(tmp_path),
            "--quiet",
            "--jobs",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1
    assert "kernel exploded" in err
    assert "toy-ema" in out


def test_parallel_sweep_matches_serial(installed_plugin, tmp_path):
    serial = sweep_mod.run_sweep(_plan(n_seeds=2), RecordStore(tmp_path / "s"), progress=False, jobs=1)
    parallel = sweep_mod.run_sweep(_plan(n_seeds=2), RecordStore(tmp_path / "p"), progress=False, jobs=2)
    by_id = {r["run_id"]: r for r in serial.records}
    assert sorted(by_id) == sorted(r["run_id"] for r in parallel.records)
    for r in parallel.records:
        assert r["loss_curve"] == by_id[r["run_id"]]["loss_curve"]
        assert r["test"] == by_id[r["run_id"]]["test"]


def test_sweep_starts_the_longest_runs_first():
    """Longest-processing-time order: the runs with the most budgeted training tokens go first."""
    cells = sweep_mod.plan(["softmax"], ["s5", "mqar", "parity"], "quick")
    runs = [resolve(s) for c in cells for s in c.selection_specs()]
    ordered = sweep_mod.longest_first(runs)
    tokens = [sweep_mod.budget_tokens(r) for r in ordered]
    assert tokens == sorted(tokens, reverse=True) and tokens[0] > tokens[-1]
    assert sorted(r.run_id for r in ordered) == sorted(r.run_id for r in runs)


def test_first_seed_scheme_runs_the_other_seeds_at_the_chosen_rate(installed_plugin, tmp_path):
    cells = _plan(n_seeds=3, lrs=[1e-4, 3e-3])
    res = sweep_mod.run_sweep(cells, RecordStore(tmp_path), progress=False)
    runs = sorted((r["seed"], r["lr"]) for r in res.records)
    chosen = max((r for r in res.records if r["seed"] == 0), key=lambda r: r["valid_score"])["lr"]
    assert runs == sorted([(0, 1e-4), (0, 3e-3), (1, chosen), (2, chosen)])
    assert res.ran == cells[0].n_runs == 4
    again = sweep_mod.run_sweep(_plan(n_seeds=3, lrs=[1e-4, 3e-3]), RecordStore(tmp_path), progress=False)
    assert (again.ran, again.reused) == (0, 4)


def test_grid_scheme_runs_every_seed_at_every_rate(installed_plugin, tmp_path):
    cells = _plan(n_seeds=2, lrs=[1e-4, 3e-3], scheme="grid")
    res = sweep_mod.run_sweep(cells, RecordStore(tmp_path), progress=False)
    assert sorted((r["seed"], r["lr"]) for r in res.records) == [(0, 1e-4), (0, 3e-3), (1, 1e-4), (1, 3e-3)]


def _strict_load(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_records_are_strict_json_nan_and_infinity_written_as_null(tmp_path):
    import numpy as np

    store = RecordStore(tmp_path)
    identity = {"kind": "numerics", "case": "nan1"}
    path = store.save(
        {
            "kind": "numerics",
            "run_id": run_id_for(identity),
            "identity": identity,
            "result": {
                "out_rms": float("nan"),
                "growth": float("inf"),
                "low": -float("inf"),
                "np": np.float32("nan"),
                "np_ok": np.float64(0.5),
                "ints": np.arange(3),
                "pair": (1.0, float("nan")),
            },
        }
    )
    data = _strict_load(path.read_text())
    assert data["result"] == {
        "out_rms": None,
        "growth": None,
        "low": None,
        "np": None,
        "np_ok": 0.5,
        "ints": [0, 1, 2],
        "pair": [1.0, None],
    }


def test_bench_json_output_is_strict():
    from harness.bench import report

    text = report.render(report.throughput_table([]), "json", [{"candidate": "a", "exponent": float("nan")}])
    assert _strict_load(text) == [{"candidate": "a", "exponent": None}]
