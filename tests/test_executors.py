"""Executors, crashed workers, retries and one store shared by several sweeps (DESIGN §9).

The local tests run the real thing at smoke tier with the toy plug-ins (tests/plugin_pkg):
``fault-once`` kills its own worker with SIGKILL on the first training step that finds a trigger
file (exactly one run of the sweep dies, whichever worker takes it), ``toy-slow`` sleeps in each
training step so a test can act while runs are in flight. The Ray tests start a real local Ray
cluster and a simulated two-node one (``ray.cluster_utils.Cluster``); they are marked slow (Ray
takes 10-20 s to start here) and skip where Ray is not installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import registry
from harness import sweep as sweep_mod
from harness.results import RecordStore
from harness.train import RunSpec, failed_record, resolve

PLUGIN_DIR = Path(__file__).parent / "plugin_pkg"
#: what must agree between two executors for the same runs (timings and hosts may differ)
RESULT_KEYS = ("run_id", "status", "valid", "test", "loss_curve", "check_curve", "steps_done", "params_mixer")


@pytest.fixture
def fault_plugin(tmp_path, monkeypatch):
    """The toy and fault plug-ins installed the way pip would (an entry point on sys.path); the
    environment gets the same path, so that subprocesses and Ray workers find them too."""
    site = tmp_path / "site"
    dist = site / "fault_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fault-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mixer_harness.candidates]\ntoy = toy_mixer_plugin\nfault = fault_plugin\n\n"
        "[mixer_harness.tasks]\ntoy = toy_mixer_plugin\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    paths = [str(site), str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    registry.reload_plugins()
    yield site
    for name in ("toy-ema", "toy-last", "fault-once", "toy-slow"):
        registry.unregister(name)
    for mod in ("toy_mixer_plugin", "fault_plugin"):
        sys.modules.pop(mod, None)


def _plan(candidates=("fault-once",), n_seeds=3):
    return sweep_mod.plan(list(candidates), ["toy-last"], "smoke", n_seeds=n_seeds)


def _statuses(store: RecordStore) -> dict[tuple[str, int], str]:
    good, bad = store.records("train")
    assert not bad, f"corrupt records: {bad}"
    return {(r["candidate"], r["seed"]): r["status"] for r in good}


def _results(records) -> dict[str, tuple]:
    return {r["run_id"]: tuple(json.dumps(r.get(k), sort_keys=True) for k in RESULT_KEYS) for r in records}


# -- the record of a crash ------------------------------------------------------------------------
def test_a_crash_record_passes_the_schema(installed_plugin, tmp_path):
    run = resolve(RunSpec("toy-ema", "toy-last", tier="smoke"))
    crash = {"executor": "local", "node": "n1", "pid": 7, "signal": 9, "signal_name": "SIGKILL"}
    rec = failed_record(run, "worker died", crash=crash, attempts=1)
    store = RecordStore(tmp_path)
    store.save(rec)
    back = store.get("train", run.run_id)
    assert back["crash"]["signal"] == 9 and back["crash"]["node"] == "n1" and back["status"] == "failed"
    from harness.results import RecordError, parse_record

    with pytest.raises(RecordError, match="crash"):
        scores = {"token_acc": 1.0, "seq_acc": 1.0}
        parse_record({**back, "status": "ok", "valid": scores, "test": scores})
    with pytest.raises(RecordError, match="attempts"):
        parse_record({**back, "attempts": 0})


def test_stale_temporary_files_are_removed(tmp_path):
    store = RecordStore(tmp_path)
    folder = store.runs / "train"
    folder.mkdir(parents=True)
    old, fresh = folder / ".abc.json.x1.tmp", folder / ".def.json.x2.tmp"
    old.write_text("")
    fresh.write_text("")
    os.utime(old, (time.time() - 600, time.time() - 600))
    assert store.remove_stale_temporaries() == [old]
    assert fresh.exists() and not old.exists()


# -- local executor: a worker that dies --------------------------------------------------------------
def test_a_killed_worker_is_a_failed_run_and_the_sweep_goes_on(fault_plugin, tmp_path, monkeypatch):
    trigger = tmp_path / "crash"
    trigger.touch()
    monkeypatch.setenv("HARNESS_TEST_CRASH_FILE", str(trigger))
    store = RecordStore(tmp_path / "res")
    res = sweep_mod.run_sweep(_plan(), store, progress=False, jobs=2)
    assert not trigger.exists(), "no worker took the crashing step"
    assert res.ran == 3 and len(res.failed) == 1
    (crashed,) = res.failed
    assert crashed["crash"]["signal"] == signal.SIGKILL and crashed["crash"]["signal_name"] == "SIGKILL"
    assert crashed["crash"]["node"] and crashed["crash"]["executor"] == "local"
    assert crashed["attempts"] == 1 and "killed by signal 9" in crashed["error"]
    statuses = _statuses(store)
    assert sorted(statuses.values()) == ["failed", "ok", "ok"]
    # the rerun tries the failed run again (attempt 2 of 1 + --retries 1) and completes
    again = sweep_mod.run_sweep(_plan(), store, progress=False, jobs=2)
    assert (again.ran, again.reused, len(again.failed)) == (1, 2, 0)
    assert set(_statuses(store).values()) == {"ok"}
    assert store.get("train", crashed["run_id"])["attempts"] == 2


def test_retries_are_counted_and_then_the_run_is_left_failed(installed_plugin, tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    cells = sweep_mod.plan(["toy-ema"], ["toy-last"], "smoke", n_seeds=1)
    calls = []

    def always_fails(run):
        calls.append(run.run_id)
        return failed_record(run, "RuntimeError: boom")

    monkeypatch.setattr(sweep_mod, "execute", always_fails)
    for attempt in (1, 2):
        res = sweep_mod.run_sweep(cells, store, progress=False, check=False, retries=1)
        assert res.ran == 1 and res.failed[0]["attempts"] == attempt
    left = sweep_mod.run_sweep(cells, store, progress=False, check=False, retries=1)
    assert (left.ran, left.reused, left.left_failed, len(left.failed)) == (0, 1, 1, 1)
    assert len(calls) == 2
    more = sweep_mod.run_sweep(cells, store, progress=False, check=False, retries=2)
    assert more.ran == 1 and more.failed[0]["attempts"] == 3
    none = sweep_mod.run_sweep(cells, store, progress=False, check=False, retries=0)
    assert none.ran == 0 and none.left_failed == 1


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(x) for x in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


TOY_SLOW = ["--candidates", "toy-slow", "--baselines", "", "--tasks", "toy-last", "--tier", "smoke"]


def _compare(res: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "compare", *TOY_SLOW, "--results-dir", str(res), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # ~45 s here; test_a_killed_worker_is_a_failed_run... covers the same path in-process
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds worker processes through /proc")
def test_kill_9_of_one_worker_from_outside(fault_plugin, tmp_path, monkeypatch):
    """The issue's reproduction: a compare with worker processes, one of them killed with kill -9."""
    monkeypatch.setenv("HARNESS_TEST_SLOW_S", "0.3")
    res = tmp_path / "res"
    proc = _compare(res, "--seeds", "4", "--jobs", "2", "--quiet")
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and proc.poll() is None:
        # a training worker: a spawned child of the driver, once the first record is in
        if list((res / "runs" / "train").glob("*.json")):
            workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
            victim = workers[0] if workers else None
        time.sleep(0.1)
    assert victim is not None, "no worker to kill"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    store = RecordStore(res)
    statuses = _statuses(store)
    assert len(statuses) == 4, err  # every run has a record: the sweep went on
    failed = [r for r in store.records("train")[0] if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["crash"]["signal"] == signal.SIGKILL, err
    assert proc.returncode == 1 and "killed by signal 9" in err
    rerun = _compare(res, "--seeds", "4", "--jobs", "2", "--quiet")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert set(_statuses(store).values()) == {"ok"}


@pytest.mark.slow  # ~40 s here
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds worker processes through /proc")
def test_kill_9_of_the_whole_sweep_loses_nothing_and_leaves_no_workers(fault_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_SLOW_S", "0.3")
    res = tmp_path / "res"
    proc = _compare(res, "--seeds", "4", "--jobs", "2", "--quiet")
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and proc.poll() is None:
        workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
        if list((res / "runs" / "train").glob("*.json")) and workers:
            break
        time.sleep(0.1)
    assert workers, "no workers seen"
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{p}/cmdline").exists() and _cmdline(p) for p in workers), "orphan workers"
    done = _statuses(RecordStore(res))  # every record written is whole
    rerun = _compare(res, "--seeds", "4", "--jobs", "2", "--quiet")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"{len(done)} reused" in err and set(_statuses(RecordStore(res)).values()) == {"ok"}


# -- one store, two sweeps ------------------------------------------------------------------------
def _trained(err: str) -> int:
    m = re.search(r"(\d+) runs: (\d+) trained", err)
    assert m, err
    return int(m.group(2))


def test_two_concurrent_compares_never_train_a_run_twice(fault_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_SLOW_S", "0.1")
    res = tmp_path / "res"
    args = ("--seeds", "6", "--jobs", "1", "--quiet")
    a, b = _compare(res, *args), _compare(res, *args)
    (_, err_a), (_, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    statuses = _statuses(RecordStore(res))
    assert len(statuses) == 6 and set(statuses.values()) == {"ok"}
    assert _trained(err_a) + _trained(err_b) == 6, err_a + err_b  # 0 runs trained by both


def test_a_run_another_sweep_holds_is_reused_once_it_is_written(installed_plugin, tmp_path):
    """The lock protocol by hand: while another holder has a run's lock, the sweep trains the others
    and waits; the record the holder writes is reused, not trained again."""
    from harness.locks import RunLocks, release

    store = RecordStore(tmp_path)
    cells = sweep_mod.plan(["toy-ema"], ["toy-last"], "smoke", n_seeds=2)
    runs = [resolve(s) for c in cells for s in c.selection_specs()]
    held = RunLocks(tmp_path).try_acquire("train", runs[0].run_id)
    assert held is not None

    def other_sweep_finishes():
        time.sleep(1.5)
        from harness.train import execute

        store.save({**execute(runs[0]), "attempts": 1})
        release(held)

    t = threading.Thread(target=other_sweep_finishes)
    t.start()
    res = sweep_mod.run_sweep(cells, store, progress=False, check=False)
    t.join()
    assert (res.ran, res.waited, res.from_other_sweeps) == (1, 1, 1)
    assert len(res.records) == 2


# -- Ray -------------------------------------------------------------------------------------------


def _ray():
    return pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")


@pytest.mark.slow
def test_ray_local_cluster_crash_rerun_and_same_records_as_local(fault_plugin, tmp_path, monkeypatch):
    ray = _ray()
    trigger = tmp_path / "crash"
    trigger.touch()
    monkeypatch.setenv("HARNESS_TEST_CRASH_FILE", str(trigger))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        store = RecordStore(tmp_path / "ray")
        cells = _plan(("fault-once", "toy-ema"), n_seeds=2)
        res = sweep_mod.run_sweep(cells, store, progress=False, executor="ray")
        assert res.ran == 4 and len(res.failed) == 1
        crash = res.failed[0]["crash"]
        assert crash["signal"] == signal.SIGKILL and crash["executor"] == "ray" and crash["node"]
        assert crash.get("ray_node_id")
        again = sweep_mod.run_sweep(cells, store, progress=False, executor="ray")
        assert (again.ran, again.reused, len(again.failed)) == (1, 3, 0)
    finally:
        ray.shutdown()
    ray_records = store.records("train")[0]
    local = sweep_mod.run_sweep(cells, RecordStore(tmp_path / "local"), progress=False, jobs=2)
    assert _results(ray_records) == _results(local.records)


@pytest.mark.slow
def test_ray_two_node_cluster_survives_losing_a_node(fault_plugin, tmp_path, monkeypatch):
    ray = _ray()
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("HARNESS_TEST_SLOW_S", "0.5")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    store = RecordStore(tmp_path / "res")
    cells = _plan(("toy-slow",), n_seeds=4)
    removed = threading.Event()

    def lose_the_worker_node():  # mid-run: the first runs are in, the next two have started
        deadline = time.time() + 240
        while time.time() < deadline and not list(store.runs.glob("train/*.json")):
            time.sleep(0.1)
        time.sleep(1.5)  # a run takes ~4 s
        cluster.remove_node(worker)
        removed.set()

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        t = threading.Thread(target=lose_the_worker_node, daemon=True)
        t.start()
        res = sweep_mod.run_sweep(cells, store, progress=False, executor="ray")
        t.join()
        assert removed.is_set()
        statuses = _statuses(store)  # every finished record intact
        assert len(statuses) == 4
        assert len(res.failed) >= 1, "the run on the removed node should be a failed record"
        for rec in res.failed:
            assert rec["crash"]["executor"] == "ray" and "died" in rec["error"] and rec["crash"]["node"]
        again = sweep_mod.run_sweep(cells, store, progress=False, executor="ray")
        assert not again.failed and set(_statuses(store).values()) == {"ok"}
    finally:
        ray.shutdown()
        cluster.shutdown()


# -- flags --------------------------------------------------------------------------------------------
FLAG_CASES = [
    ("--address auto", "--address auto: only with --executor ray"),
    ("--cpus-per-run 2", "--cpus-per-run 2.0: only with --executor ray"),
    ("--gpus-per-run 1.5", "a fraction in (0, 1]"),
    ("--retries -1", "an integer >= 0"),
    ("--executor ray --device cuda:1", "give --device cuda"),
    ("--executor dask", "invalid choice"),
]


@pytest.mark.parametrize("flags,words", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_executor_flags_are_checked_before_anything_runs(flags, words, tmp_path, capsys):
    from harness.cli import main

    res = tmp_path / "res"
    argv = [
        "compare",
        "--candidates",
        "softmax",
        "--baselines",
        "",
        "--tier",
        "smoke",
        "--results-dir",
        str(res),
    ]
    rc = main([*argv, *flags.split()])
    out, err = capsys.readouterr()
    assert rc == 2 and words in err, err
    assert not res.exists() or not list(res.rglob("*.json"))


def test_ray_flags_need_ray_or_a_gpu(tmp_path, capsys):
    from harness.cli import main

    argv = ["compare", "--candidates", "softmax", "--baselines", "", "--tier", "smoke"]
    rc = main([*argv, "--results-dir", str(tmp_path), "--executor", "ray", "--gpus-per-run", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2
    try:
        import ray  # noqa: F401
    except ImportError:
        assert "pip install 'mixer-harness[ray]'" in err
    else:
        assert "--gpus-per-run 0.5 with --device cpu" in err
