"""Committed record snapshots: the records behind a committed leaderboard, kept in git.

``results/runs/`` is not committed (a local sweep must not bloat the repository), but the records
behind the committed leaderboards are what a reader checks them against and what a later session
resumes a long sweep from. A snapshot is one gzipped JSON-lines file per tier and machine class,
``results/snapshots/<tier>-<machine class>.jsonl.gz``: every record (training runs, conformance
verdicts) whose run id its leaderboards use.

``harness compare`` seeds its store from the snapshot of this machine's class before planning (a
record is copied only if its run id matches its identity and no record of that id is stored yet),
so on a machine of the committed class with the committed code, the default compare is served from
the snapshot; changed code gets new run ids and trains. ``--no-snapshot`` trains everything.
Records of another machine class are never used: CPU kernels differ in rounding between CPU models.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT
from harness.identity import run_id_for
from harness.results import RecordStore, strict_json

SNAPSHOT_DIR = REPO_ROOT / "results" / "snapshots"
KINDS = ("train", "conformance")


def snapshot_path(tier: str, machine_class: str, directory: Path = SNAPSHOT_DIR) -> Path:
    return directory / f"{tier}-{machine_class}.jsonl.gz"


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of a snapshot file whose run id matches its identity (others are skipped)."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("run_id") == run_id_for(rec.get("identity", {})):
                out.append(rec)
    return out


def write(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write (replace) a snapshot: records sorted by kind and run id, one compact line each, and a
    fixed gzip timestamp, so an unchanged set of records gives the same bytes."""
    rows = sorted(records, key=lambda r: (r.get("kind", ""), r.get("run_id", "")))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
        for rec in rows:
            f.write((json.dumps(strict_json(rec), sort_keys=True, separators=(",", ":")) + "\n").encode())
    tmp.replace(path)
    return len(rows)


def export(store: RecordStore, path: Path, keep: Iterable[dict[str, Any]]) -> int:
    """Merge ``keep`` (records of ``store``) into the snapshot at ``path``: records of the same run
    id are replaced, others already in the snapshot stay (one file serves every group)."""
    merged = {r["run_id"]: r for r in (read(path) if path.exists() else [])}
    merged.update({r["run_id"]: r for r in keep})
    return write(path, merged.values())


def seed_store(store: RecordStore, path: Path) -> int:
    """Copy the snapshot's records that ``store`` lacks into it; returns how many were copied."""
    if not path.exists():
        return 0
    copied = 0
    for rec in read(path):
        if rec.get("kind") in KINDS and store.get(rec["kind"], rec["run_id"]) is None:
            store.save(rec)
            copied += 1
    return copied
