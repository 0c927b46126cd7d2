"""``harness gate``: the verdicts, the faults the tests inject, and the gate catching what it must.

The end-to-end tests use reduced settings (two candidates, short training, few samples) so the
whole file runs in a few minutes on a loaded 2-core machine. What they pin down:
- an unchanged tree passes, repeatedly (the speed comparison is run ten times, 0 failures);
- a deliberate 1.5x slowdown of one candidate and a deliberate accuracy drop (a muted mixer) are
  both caught, in the baseline form and in the A/B form (the faults: tests/gate_faults.py);
- the A/B form measures the base commit with its own code (a worktree, a subprocess);
- exit codes: 0 pass, 1 regression, 2 error.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import gate_faults
import numpy as np
import pytest
import torch

from harness.gate import cli, worker
from harness.gate.settings import QualitySettings, SpeedSettings
from harness.gate.verdicts import QUALITY, SPEED, VALUE, judge, quality_verdict
from harness.registry import get_candidate

ROOT = Path(__file__).resolve().parent.parent
SPEED_SETTINGS = SpeedSettings(batch=4, seq_len=128, d_model=64, reps=3)
QUALITY_SETTINGS = QualitySettings(steps=60)
PAIR = ["softmax", "diagonal"]


# -- verdicts ---------------------------------------------------------------------------------------------------
def _noisy(median: float, n: int, rel: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median * np.exp(rng.normal(0, rel, n)) * (1 + rng.exponential(rel, n)))


def test_a_clear_slowdown_is_slower():
    v = judge("x", SPEED, _noisy(2.0, 20, 0.1, 0), _noisy(3.0, 20, 0.1, 1))
    assert v.status == "slower" and v.regression and v.p_value < 1e-4 and 1.3 < v.change < 1.7


def test_same_distribution_is_ok_and_speedups_are_not_regressions():
    assert judge("x", SPEED, _noisy(2.0, 20, 0.15, 0), _noisy(2.0, 20, 0.15, 1)).status == "ok"
    v = judge("x", SPEED, _noisy(3.0, 20, 0.1, 0), _noisy(2.0, 20, 0.1, 1))
    assert v.status == "faster" and not v.regression


def test_both_the_factor_and_the_test_are_needed():
    # significant but small (1.15x < 1.3x): not a regression
    small = judge("x", SPEED, _noisy(2.0, 30, 0.02, 0), _noisy(2.3, 30, 0.02, 1))
    assert small.p_value < 1e-6 and small.status == "ok"
    # a large median change that the samples do not support (3 vs 3 wild samples): not a regression
    wild = judge("x", SPEED, [1.0, 4.0, 1.2], [1.9, 5.0, 2.0])
    assert wild.change > 1.3 and wild.p_value > 0.01 and wild.status == "ok"


def test_quality_tolerance_and_failures():
    base = {"status": "ok", "token_acc": 0.50}
    assert quality_verdict("k", base, {"status": "ok", "token_acc": 0.49}).status == "ok"
    assert quality_verdict("k", base, {"status": "ok", "token_acc": 0.47}).status == "worse"
    assert quality_verdict("k", base, {"status": "ok", "token_acc": 0.60}).status == "better"
    assert quality_verdict("k", base, {"status": "failed", "error": "boom"}).regression
    assert quality_verdict("k", None, {"status": "ok", "token_acc": 0.3}).status == "new"
    assert quality_verdict("k", base, None).status == "missing"
    both = quality_verdict("k", {"status": "failed"}, {"status": "failed", "error": "boom"})
    assert both.status == "failed in both" and not both.regression
    diverged = quality_verdict("k", base, {"status": "diverged", "token_acc": 0.0})
    assert diverged.status == "worse"  # a diverged run scores 0: counted, not a failure


def test_one_judge_for_every_kind():
    # an error rate is a score where lower is better
    assert judge("e", QUALITY, 0.10, 0.13, higher_is_better=False).status == "worse"
    assert judge("e", QUALITY, 0.10, 0.11, higher_is_better=False).status == "ok"
    # one reading a side (peak memory): the factor alone
    assert judge("m", VALUE, [100.0], [140.0]).status == "worse"
    assert judge("m", VALUE, 100.0, 120.0).status == "ok"
    # too few samples for the test: never called slower, however large the change
    assert judge("t", SPEED, [1.0], [3.0]).status == "ok"
    with pytest.raises(ValueError, match="unknown kind"):
        judge("x", "latency", [1.0], [1.0])


# -- the faults the tests inject work as advertised ----------------------------------------------------------
def test_parse_faults():
    faults = gate_faults.parse("a=slow:1.5, b-c=mute")
    assert set(faults) == {"a", "b-c"} and faults["b-c"] is gate_faults.mute
    with pytest.raises(ValueError, match="unknown fault"):
        gate_faults.parse("a=fast")


def test_slowed_mixer_takes_about_factor_times_as_long_and_computes_the_same():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    inner = get_candidate("softmax").build(64)
    torch.manual_seed(0)
    slowed = get_candidate("softmax").build(64)
    gate_faults.slow_down(1.5)(slowed)
    x = torch.randn(4, 128, 64, requires_grad=True)
    g = torch.randn(4, 128, 64)
    y1 = inner(x)
    y2 = slowed(x)
    assert torch.equal(y1, y2)
    (gx1,) = torch.autograd.grad(y1, x, g)
    (gx2,) = torch.autograd.grad(y2, x, g)
    assert torch.equal(gx1, gx2)

    def cpu_time(model) -> float:
        t0 = time.thread_time()
        model(x).backward(g)
        return time.thread_time() - t0

    for _ in range(2):  # warm-up
        cpu_time(inner), cpu_time(slowed)
    ratio = float(np.median([cpu_time(slowed) / cpu_time(inner) for _ in range(15)]))  # interleaved pairs
    assert 1.3 < ratio < 1.8, ratio


def test_installed_faults_change_what_a_name_builds(monkeypatch):
    gate_faults.install({"softmax": gate_faults.mute}, monkeypatch.setitem)
    assert torch.count_nonzero(get_candidate("softmax").build(32)(torch.randn(2, 8, 32))) == 0
    monkeypatch.undo()
    assert torch.count_nonzero(get_candidate("softmax").build(32)(torch.randn(2, 8, 32))) > 0


# -- speed: unchanged passes repeatedly; a 1.5x slowdown is caught --------------------------------------------------
def _samples(session: worker.SpeedSession, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in session.calls}
    for r in range(n):
        for name, s in session.sample(r).items():
            out[name].append(s["ratio"])
    return out


@pytest.mark.slow
def test_speed_gate_passes_unchanged_repeatedly_and_catches_a_slowdown(monkeypatch):
    torch.set_num_threads(1)
    base = _samples(worker.SpeedSession(PAIR, SPEED_SETTINGS), 15)
    failures = 0
    for _ in range(10):  # the same tree, measured again: must never flag
        new = _samples(worker.SpeedSession(PAIR, SPEED_SETTINGS), 15)
        failures += sum(judge(n, SPEED, base[n], new[n]).regression for n in PAIR)
    assert failures == 0
    gate_faults.install({"diagonal": gate_faults.slow_down(1.5)}, monkeypatch.setitem)
    slowed = _samples(worker.SpeedSession(PAIR, SPEED_SETTINGS), 15)
    verdicts = {n: judge(n, SPEED, base[n], slowed[n]) for n in PAIR}
    assert verdicts["diagonal"].status == "slower", verdicts["diagonal"]
    assert verdicts["softmax"].status == "ok", verdicts["softmax"]


# -- quality: deterministic; a degraded run is caught ------------------------------------------------------------
def test_quality_runs_repeat_exactly_and_a_muted_mixer_is_caught(monkeypatch):
    a = worker.quality_run("softmax", "associative-recall", QUALITY_SETTINGS)
    b = worker.quality_run("softmax", "associative-recall", QUALITY_SETTINGS)
    assert a["status"] == "ok" and a["token_acc"] == b["token_acc"]
    gate_faults.install({"softmax": gate_faults.mute}, monkeypatch.setitem)
    degraded = worker.quality_run("softmax", "associative-recall", QUALITY_SETTINGS)
    v = quality_verdict("softmax/associative-recall", a, degraded)
    assert v.status == "worse" and a["token_acc"] - degraded["token_acc"] > 0.05


# -- the command ----------------------------------------------------------------------------------------------------
def _gate(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["gate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


SMALL = ["--candidates", ",".join(PAIR), "--steps", "60", "--samples", "10", "--batch", "4"]


@pytest.mark.slow
def test_gate_command_baseline_pass_and_fail(tmp_path, capsys, monkeypatch):
    res = ["--results-dir", str(tmp_path)]
    rc, _, err = _gate(capsys, *res)
    assert rc == 2 and "no baseline for machine class" in err  # and how to make one
    rc, _, err = _gate(capsys, *res, "--update-baseline", *SMALL)
    assert rc == 0, err
    (path,) = (tmp_path / "baselines").glob("*.json")
    data = json.loads(path.read_text())
    assert data["candidates"] == PAIR and data["speed_settings"]["batch"] == 4
    assert set(data["quality"]) == {"softmax/associative-recall", "diagonal/associative-recall"}

    rc, out, _ = _gate(capsys, *res, "--format", "json", "--samples", "10")  # settings from the baseline
    report = json.loads(out)
    assert rc == 0 and report["passed"], out
    assert [q["new"] for q in report["quality"]] == [q["base"] for q in report["quality"]]  # exact

    gate_faults.install(gate_faults.parse("diagonal=slow:1.5,softmax=mute"), monkeypatch.setitem)
    rc, out, _ = _gate(capsys, *res, "--samples", "10")
    assert rc == 1, out
    assert "SLOWER" in out and "WORSE" in out
    assert "2 regression(s): softmax/associative-recall, diagonal" in out

    rc, _, err = _gate(capsys, *res, "--steps", "40")  # not comparable with the baseline
    assert rc == 2 and "differ from the baseline" in err


@pytest.mark.slow
def test_gate_ab_measures_the_base_with_its_own_code(capsys, monkeypatch):
    # the faults reach the current side's worker only (through sitecustomize: tests/gate_faults.py)
    monkeypatch.setenv(gate_faults.FAULTS_ENV, "diagonal=slow:1.5,softmax=mute")
    monkeypatch.setenv(gate_faults.TREE_ENV, str(ROOT))
    path = [str(gate_faults.SITE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    rc, out, err = _gate(capsys, "--base", head, *SMALL, "--format", "json")
    assert rc == 1, out + err
    report = json.loads(out)
    assert set(report["regressions"]) == {"diagonal", "softmax/associative-recall"}
    base, current = report["sides"]["base"], report["sides"]["current"]
    assert base["pid"] != current["pid"]
    # the base imported the registry from a temporary worktree of HEAD, the current side from here
    base_file = Path(base["registry_file"])
    assert base_file.parts[-3:] == ("tree", "harness", "registry.py")
    assert base_file.parent.parent.parent.name.startswith(f"harness-{head[:8]}-")
    tree = base_file.parent.parent
    assert (
        Path(base["candidates_dir"]) == tree / "candidates" and Path(base["kernels_dir"]) == tree / "kernels"
    )
    assert Path(current["registry_file"]) == (ROOT / "harness" / "registry.py").resolve()
    assert Path(current["candidates_dir"]) == (ROOT / "candidates").resolve()
    assert base["git_commit"] == head
    assert not base_file.exists()  # the temporary worktree is gone


def test_gate_base_unknown_revision_is_an_error(capsys):
    rc, _, err = _gate(capsys, "--base", "no-such-ref-xyz", "--skip-speed")
    assert rc == 2 and "no-such-ref-xyz" in err
