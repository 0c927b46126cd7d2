"""The results store: one JSON record per finished run, written atomically, keyed by identity.

A record's ``run_id`` is a hash of everything that identifies the run (``identity``): for a
training run the candidate, its resolved hyperparameters and source hash, the task and its config,
the tier's training settings, the seed, the learning rate and the protocol version. A rerun with the
same identity finds the record and reuses it; a changed candidate source gets a new id. Records are
written to a temporary file in the same directory and renamed, so a killed sweep never leaves a
half-written record; a file that does not parse is reported by path (``CorruptRecord``), never
silently skipped.

Every JSON file the harness writes is strict JSON (RFC 8259): a NaN or an infinity, which Python's
``json`` would write as the bare words ``NaN`` / ``Infinity`` that other parsers reject, is written as
``null`` (``strict_json``), and the writer refuses anything that is still not JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.identity import canonical_json, run_id_for  # noqa: F401 - re-exported

RECORD_SCHEMA = 1


class CorruptRecord(RuntimeError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt result record {path}: {reason} (delete it or rerun with --force)")
        self.path = path


def strict_json(obj: Any) -> Any:
    """A copy of ``obj`` that is valid JSON: non-finite floats become ``None`` (JSON ``null``), tuples
    lists, numpy scalars and arrays Python numbers and lists, dict keys strings. Other objects are
    left for the encoder (``default=str`` where the caller gives it)."""
    if isinstance(obj, float):  # numpy.float64 included
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return int(obj) if isinstance(obj, int) and not isinstance(obj, bool) else obj
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # numpy scalars and arrays
        return strict_json(obj.tolist())
    return obj


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``strict_json(obj)`` with ``allow_nan=False``: never a bare NaN."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and infinity as null) via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(strict_json(obj), f, indent=2, sort_keys=True, default=str, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RecordStore:
    """Records under ``<root>/runs/<kind>/<run_id>.json`` (kind: "train", "throughput", ...)."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"

    def path_for(self, kind: str, run_id: str) -> Path:
        return self.runs / kind / f"{run_id}.json"

    def save(self, record: dict[str, Any]) -> Path:
        for key in ("kind", "run_id", "identity"):
            if key not in record:
                raise ValueError(f"record needs a {key!r} field")
        record = {"schema": RECORD_SCHEMA, **record}
        path = self.path_for(record["kind"], record["run_id"])
        atomic_write_json(path, record)
        return path

    def load_path(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptRecord(path, str(e)) from e
        if not isinstance(data, dict) or "run_id" not in data or "kind" not in data:
            raise CorruptRecord(path, "not a record (missing run_id/kind)")
        return data

    def get(self, kind: str, run_id: str) -> dict[str, Any] | None:
        path = self.path_for(kind, run_id)
        if not path.exists():
            return None
        return self.load_path(path)

    def find(self, run_id: str) -> dict[str, Any]:
        """A record by id (or unique id prefix) across kinds."""
        matches = sorted(self.runs.glob(f"*/{run_id}*.json")) if self.runs.exists() else []
        if not matches:
            raise KeyError(f"no record with run id {run_id!r} under {self.runs}")
        if len(matches) > 1:
            names = ", ".join(p.stem for p in matches[:6])
            raise KeyError(f"run id prefix {run_id!r} is ambiguous: {names}")
        return self.load_path(matches[0])

    def iter_records(self, kind: str | None = None) -> Iterator[dict[str, Any] | CorruptRecord]:
        """Every record (of ``kind``); corrupt files are yielded as ``CorruptRecord`` for reporting."""
        if not self.runs.exists():
            return
        pattern = f"{kind}/*.json" if kind else "*/*.json"
        for path in sorted(self.runs.glob(pattern)):
            try:
                yield self.load_path(path)
            except CorruptRecord as e:
                yield e

    def records(self, kind: str | None = None) -> tuple[list[dict[str, Any]], list[CorruptRecord]]:
        good, bad = [], []
        for r in self.iter_records(kind):
            (bad if isinstance(r, CorruptRecord) else good).append(r)
        return good, bad
