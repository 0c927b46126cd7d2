"""The CLI's public forms and its errors: clear messages naming the bad value, exit code 2."""

from __future__ import annotations

import json

import pytest

from harness.cli import main, parse_value
from harness.results import run_id_for


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def toy_flags(tmp_path) -> list[str]:
    """The selection flags of the toy plug-in's compare (smoke tier, no baselines) into ``tmp_path``."""
    return [
        "--candidates",
        "toy-ema",
        "--baselines",
        "",
        "--tasks",
        "toy-last",
        "--tier",
        "smoke",
        "--results-dir",
        str(tmp_path),
    ]


def toy_compare(capsys, tmp_path) -> list[str]:
    """Run the toy plug-in's compare into ``tmp_path``; return the selection flags for reuse."""
    common = toy_flags(tmp_path)
    assert run(capsys, "compare", *common, "--quiet", "--jobs", "1")[0] == 0
    return common


def test_unknown_candidate_suggests_near_names(capsys):
    rc, _, err = run(capsys, "run", "--candidate", "softmx", "--task", "mqar", "--tier", "smoke")
    assert rc == 2
    assert "unknown candidate 'softmx'" in err and "did you mean 'softmax'" in err


def test_unknown_task_suggests_near_names(capsys):
    rc, _, err = run(capsys, "run", "--candidate", "softmax", "--task", "mqr", "--tier", "smoke")
    assert rc == 2 and "unknown task 'mqr'" in err and "'mqar'" in err


def test_unknown_hyperparameter_is_an_error(capsys):
    rc, _, err = run(
        capsys, "run", "--candidate", "softmax", "--task", "mqar", "--tier", "smoke", "--set", "n_head=2"
    )
    assert rc == 2
    assert "unknown hyperparameter 'n_head' of candidate 'softmax'" in err and "'n_heads'" in err


def test_unknown_task_field_and_bad_set_syntax(capsys):
    rc, _, err = run(
        capsys,
        "run",
        "--candidate",
        "softmax",
        "--task",
        "mqar",
        "--tier",
        "smoke",
        "--task-set",
        "num_pair=3",
    )
    assert rc == 2 and "num_pair" in err and "num_pairs" in err
    rc, _, err = run(capsys, "run", "--candidate", "softmax", "--task", "mqar", "--set", "n_heads")
    assert rc == 2 and "expects key=value" in err


def test_unknown_group(capsys):
    rc, _, err = run(capsys, "compare", "--group", "transition", "--tier", "smoke")
    assert rc == 2 and "unknown group 'transition'" in err and "'transitions'" in err


def test_list_json_shape(capsys):
    rc, out, _ = run(capsys, "list", "--format", "json")
    assert rc == 0
    data = json.loads(out)
    names = {c["name"] for c in data["candidates"]}
    assert {"softmax", "linear-attention"} <= names
    assert {"mqar", "selective-copy", "s5", "associative-recall"} <= {t["name"] for t in data["tasks"]}
    softmax = next(c for c in data["candidates"] if c["name"] == "softmax")
    assert "attention" in softmax["groups"] and softmax["reference"]


def test_list_group_filter(capsys):
    rc, out, _ = run(capsys, "list", "candidates", "--group", "attention", "--format", "json")
    assert rc == 0
    assert all("attention" in c["groups"] for c in json.loads(out)["candidates"])


def test_leaderboard_without_records_is_a_clear_error(capsys, tmp_path):
    rc, _, err = run(capsys, "leaderboard", "--results-dir", str(tmp_path), "--no-snapshot")
    assert rc == 2 and "no stored quick records" in err


def test_show_unknown_run(capsys, tmp_path):
    rc, _, err = run(capsys, "show", "deadbeef", "--results-dir", str(tmp_path))
    assert rc == 2 and "deadbeef" in err


def test_compare_then_leaderboard_and_show(installed_plugin, capsys, tmp_path):
    res = str(tmp_path)
    common = toy_flags(tmp_path)
    rc, out, _ = run(capsys, "compare", *common, "--format", "json", "--quiet", "--jobs", "1")
    assert rc == 0
    rows = json.loads(out)
    assert isinstance(rows, list) and rows[0]["candidate"] == "toy-ema"
    cell = rows[0]["tasks"]["toy-last"]
    assert 0.0 <= cell["mean"] <= 1.0 and rows[0]["state_bytes"] > 0 and rows[0]["params"] > 0
    assert cell["lr"] in cell["lrs_tried"] and cell["n_seeds"] == 1
    for fmt, needle in (
        ("table", "toy-ema"),
        ("markdown", "| toy-ema"),
        ("csv", "candidate,"),
        ("html", "<table"),
    ):
        rc, out, _ = run(capsys, "leaderboard", *common, "--format", fmt)
        assert rc == 0 and needle in out, fmt
    run_id = next((tmp_path / "runs" / "train").glob("*.json")).stem
    rc, out, _ = run(capsys, "show", run_id[:8], "--results-dir", res)
    assert rc == 0 and json.loads(out)["run_id"] == run_id


def test_leaderboard_reports_corrupt_record(installed_plugin, capsys, tmp_path):
    common = toy_compare(capsys, tmp_path)
    bad = tmp_path / "runs" / "train" / "0000broken.json"
    bad.write_text("{not json")
    rc, out, err = run(capsys, "leaderboard", *common)
    assert rc == 1 and str(bad) in err and "toy-ema" in out


@pytest.mark.parametrize(
    "text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("(1, 2)", (1, 2)), ("abc", "abc")]
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_leaderboard_leaves_out_records_of_older_code(installed_plugin, capsys, tmp_path):
    common = toy_compare(capsys, tmp_path)
    path = next((tmp_path / "runs" / "train").glob("*.json"))
    stale = json.loads(path.read_text())
    stale["identity"]["candidate_source"] = "older"
    stale["run_id"] = run_id_for(stale["identity"])
    stale["test"]["token_acc"] = 0.0
    (path.parent / f"{stale['run_id']}.json").write_text(json.dumps(stale))
    rc, out, err = run(capsys, "leaderboard", *common, "--format", "json")
    assert rc == 0 and "1 stored records of older code" in err
    assert json.loads(out)[0]["tasks"]["toy-last"]["mean"] > 0.0
    rc, out, _ = run(capsys, "leaderboard", *common, "--format", "json", "--all-versions")
    assert rc == 0
