"""`harness check` on a package outside the repository, and no nonconforming candidate on a board."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness import registry
from harness.cli import main

PLUGIN_DIR = Path(__file__).parent / "plugin_pkg"


@pytest.fixture
def outside_package(tmp_path, monkeypatch):
    """Install tests/plugin_pkg/outside_mixers.py as pip would: a dist-info with its entry point."""
    dist = tmp_path / "outside_mixers-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-mixers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mixer_harness.candidates]\nmine = outside_mixers\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    registry.reload_plugins()
    yield
    for name in ("ext-good", "ext-peek", "ext-badstep", "ext-nangrad"):
        registry.unregister(name)
    sys.modules.pop("outside_mixers", None)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("name", "rc", "check", "words"),
    [
        ("ext-good", 0, None, None),
        ("ext-peek", 1, "causal", "the parallel form is not causal"),
        ("ext-badstep", 1, "forms agree", "does `step` apply the same"),
        ("ext-nangrad", 1, "gradients finite", "non-finite"),
    ],
)
def test_check_says_what_to_fix(outside_package, capsys, name, rc, check, words):
    code, out, _ = run(capsys, "check", name, "--format", "json")
    assert code == rc
    results = {r["check"]: r for r in json.loads(out)[name]}
    failed = [c for c, r in results.items() if r["status"] == "fail"]
    if check is None:
        assert failed == []
    else:
        assert check in failed and words in results[check]["detail"]
    code, out, _ = run(capsys, "check", name)
    assert code == rc and ("FAIL" in out) == (rc == 1)


def test_check_a_group_and_usage_errors(outside_package, capsys):
    code, out, _ = run(capsys, "check", "--group", "external")
    assert code == 1 and "1 of 4 candidates conform" in out
    code, _, err = run(capsys, "check", "ext-goood")
    assert code == 2 and "did you mean 'ext-good'" in err
    code, _, err = run(capsys, "check")
    assert code == 2 and "names or --group" in err


def test_compare_ranks_no_nonconforming_candidate(outside_package, installed_plugin, capsys, tmp_path):
    flags = ["--baselines", "", "--tasks", "toy-last", "--tier", "smoke", "--results-dir", str(tmp_path)]
    code, out, err = run(
        capsys, "compare", "--group", "external", *flags, "--format", "json", "--quiet", "--jobs", "1"
    )
    assert code == 1, err
    rows = {r["candidate"]: r for r in json.loads(out)}
    assert rows["ext-good"]["rank"] is not None and rows["ext-good"]["nonconforming"] is None
    for bad in ("ext-peek", "ext-badstep", "ext-nangrad"):
        assert rows[bad]["rank"] is None and rows[bad]["nonconforming"] and not rows[bad]["tasks"]
        assert f"NONCONFORMING {bad}" in err
    trained = {json.loads(p.read_text())["candidate"] for p in (tmp_path / "runs" / "train").glob("*.json")}
    assert trained == {"ext-good"}
    # the leaderboard from stored records shows them the same way, and a rerun checks nothing again
    code, out, _ = run(capsys, "leaderboard", "--group", "external", *flags)
    assert "not ranked: fails causal" in out and "NONCONFORMING" in out
    n_verdicts = len(list((tmp_path / "runs" / "conformance").glob("*.json")))
    run(capsys, "compare", "--group", "external", *flags, "--quiet", "--jobs", "1")
    assert len(list((tmp_path / "runs" / "conformance").glob("*.json"))) == n_verdicts == 4


def test_run_refuses_a_nonconforming_candidate(outside_package, installed_plugin, capsys, tmp_path):
    code, _, err = run(
        capsys,
        "run",
        "--candidate",
        "ext-peek",
        "--task",
        "toy-last",
        "--tier",
        "smoke",
        "--results-dir",
        str(tmp_path),
        "--quiet",
    )
    assert code == 1 and "NONCONFORMING ext-peek" in err
    assert not (tmp_path / "runs" / "train").exists()


def test_candidates_join_a_groups_board(outside_package, capsys):
    from harness.cli import _compare_candidates, build_parser

    args = build_parser().parse_args(
        ["compare", "--candidates", "ext-good", "--group", "external", "--baselines", "", "--tier", "smoke"]
    )
    names = _compare_candidates(args)
    assert names[0] == "ext-good" and sorted(names) == ["ext-badstep", "ext-good", "ext-nangrad", "ext-peek"]
