"""Committed snapshots: export the records behind a board, seed a fresh store, resume without training."""

from __future__ import annotations

import gzip
import json

from harness import snapshots
from harness.cli import main
from harness.results import RecordStore


def _compare(tmp, capsys, *extra):
    rc = main(
        [
            "compare",
            "--candidates",
            "toy-ema",
            "--baselines",
            "",
            "--tasks",
            "toy-last",
            "--tier",
            "smoke",
            "--results-dir",
            str(tmp),
            "--quiet",
            "--jobs",
            "1",
            *extra,
        ]
    )
    return rc, capsys.readouterr()


def test_export_then_seed_a_fresh_store_reuses_everything(installed_plugin, tmp_path, capsys, monkeypatch):
    snap = tmp_path / "snap.jsonl.gz"
    assert _compare(tmp_path / "a", capsys)[0] == 0
    rc = main(
        [
            "snapshot",
            "--candidates",
            "toy-ema",
            "--baselines",
            "",
            "--tier",
            "smoke",
            "--results-dir",
            str(tmp_path / "a"),
            "--output",
            str(snap),
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in gzip.open(snap, "rt")]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["conformance", "train"]
    assert snapshots.write(tmp_path / "again.jsonl.gz", rows) == 2
    assert (tmp_path / "again.jsonl.gz").read_bytes() == snap.read_bytes()  # deterministic bytes

    fresh = RecordStore(tmp_path / "b")
    assert snapshots.seed_store(fresh, snap) == 2
    assert snapshots.seed_store(fresh, snap) == 0  # nothing twice
    monkeypatch.setattr(snapshots, "snapshot_path", lambda tier, machine, directory=None: snap)
    rc, (out, err) = _compare(tmp_path / "c", capsys)
    assert rc == 0 and "1 runs: 0 trained, 1 reused" in err and "copied from the committed snapshot" in err
    rc, (out, err) = _compare(tmp_path / "d", capsys, "--no-snapshot")
    assert "1 trained" in err


def test_a_record_whose_id_does_not_match_its_identity_is_not_seeded(tmp_path):
    good = {"kind": "train", "run_id": "", "identity": {"x": 1}}
    from harness.identity import run_id_for

    good["run_id"] = run_id_for(good["identity"])
    forged = {"kind": "train", "run_id": "0123456789abcdef", "identity": {"x": 2}}
    snap = tmp_path / "s.jsonl.gz"
    snapshots.write(snap, [good, forged])
    assert [r["run_id"] for r in snapshots.read(snap)] == [good["run_id"]]
