"""The results store: one JSON record per finished run, written atomically, keyed by identity.

A record's ``run_id`` is a hash of everything that identifies the run (``identity``): for a
training run the candidate, its resolved hyperparameters and source hash, the task and its config,
the tier's training settings, the seed, the learning rate and the protocol version. A rerun with the
same identity finds the record and reuses it; a changed candidate source gets a new id. Records are
written to a temporary file in the same directory and renamed, so a killed sweep never leaves a
half-written record.

Every record is read and written through one schema (``parse_record``, typed by the dataclasses
below; extra keys are allowed, records carry much detail). A file that fails it — it does not
parse, has the wrong shape, or its content does not match its name (file name, folder, or the hash
of its identity) — is *set aside*: renamed to ``<name>.corrupt`` (never deleted), reported by path
(``CorruptRecord``), and treated as missing, so ``harness compare`` redoes its run.
``harness doctor`` checks a whole store.

Every JSON file the harness writes is strict JSON (RFC 8259): a NaN or an infinity, which Python's
``json`` would write as the bare words ``NaN`` / ``Infinity`` that other parsers reject, is written as
``null`` (``strict_json``), and the writer refuses anything that is still not JSON. The schema sees a
record as a reader will: after that conversion.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.identity import canonical_json, run_id_for  # noqa: F401 - re-exported

RECORD_SCHEMA = 1
CORRUPT_SUFFIX = ".corrupt"
TRAIN_STATUSES = ("ok", "diverged", "failed")
#: the kinds written by this package (other kinds are checked by the common part of the schema only)
BENCH_KINDS = ("throughput", "numerics", "scans")
#: what a run id looks like (``run_id_for``: 16 hex digits); ``show`` takes a prefix of one
RUN_ID_RE = re.compile(r"[0-9a-f]{1,64}")


class RecordError(Exception):
    """A record that does not fit the schema; the message says which field and why."""


class CorruptRecord(RuntimeError):
    """A record file that failed the schema: where it was, why, and where it was moved."""

    def __init__(self, path: Path, reason: str, moved_to: Path | None = None, move_error: str | None = None):
        self.path, self.reason, self.moved_to, self.move_error = path, reason, moved_to, move_error
        if moved_to is not None:
            where = f"set aside as {moved_to.name}"
        elif move_error is not None:
            where = f"could not be set aside ({move_error}); move or delete it"
        else:
            where = "left in place"
        super().__init__(f"corrupt record {path}: {reason}; {where}")


# -- the schema -------------------------------------------------------------------------------------
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_WORD = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}
_IS = {
    str: lambda v: isinstance(v, str),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: _is_num,
    bool: lambda v: isinstance(v, bool),
    dict: lambda v: isinstance(v, dict),
    list: lambda v: isinstance(v, list),
}


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the text {v[:40]!r}"
    return {dict: "an object", list: "a list"}.get(type(v), type(v).__name__)


def _check_type(where: str, value: Any, tp: Any) -> None:
    """``value`` against an annotation: a plain type, ``X | None``, ``dict[str, X]``, a dataclass."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        (tp,) = [a for a in args if a is not type(None)]
        args = typing.get_args(tp)
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        _parse_fields(tp, value, where)
        return
    origin = typing.get_origin(tp) or tp
    if not _IS[origin](value):
        raise RecordError(f"{where} must be {_WORD[origin]}, got {_kind(value)}")
    if origin is dict and args:
        for k, v in value.items():
            _check_type(f"{where}[{k!r}]", v, args[1])


def _parse_fields(cls: type, data: Any, where: str) -> None:
    """The fields of dataclass ``cls`` in ``data`` (a dict; extra keys allowed), then ``cls.check``."""
    if not isinstance(data, dict):
        raise RecordError(f"{where or 'the record'} must be an object, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where or 'the record'} has no {f.name!r}")
            continue
        _check_type(name, data[f.name], hints[f.name])
    if "check" in cls.__dict__:  # each class checks its own rules (a subclass does not rerun its base's)
        cls.check(data, where)


def _fraction(where: str, v: Any) -> None:
    if not (_is_num(v) and 0.0 <= v <= 1.0):
        raise RecordError(f"{where} must be an accuracy in [0, 1], got {_kind(v)}")


@dataclass(frozen=True)
class Scores:
    """Accuracies on one held-out set (``harness.training.evaluate``)."""

    token_acc: float
    seq_acc: float
    n: int | None = None
    beyond_token_acc: float | None = None  # at a longer test length: positions beyond training
    beyond_seq_acc: float | None = None

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        for key in ("token_acc", "seq_acc", "beyond_token_acc", "beyond_seq_acc"):
            if data.get(key) is not None:
                _fraction(f"{where}.{key}", data[key])


@dataclass(frozen=True)
class LengthScores(Scores):
    """Accuracies at a longer test length: ``beyond_token_acc`` is what ranks a length task."""

    beyond_token_acc: float = 0.0

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        if "beyond_token_acc" not in data:
            raise RecordError(f"{where} has no 'beyond_token_acc'")
        Scores.check(data, where)


@dataclass(frozen=True)
class Record:
    """What every record has: its kind, its id and the identity the id hashes."""

    kind: str
    run_id: str
    identity: dict[str, Any]
    schema: int = RECORD_SCHEMA

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        expected = run_id_for(data["identity"])
        if data["run_id"] != expected:
            raise RecordError(
                f"run_id {data['run_id']!r} is not the hash of the record's identity ({expected}): "
                "the content belongs to another run"
            )
        ident_kind = data["identity"].get("kind")
        if ident_kind is not None and ident_kind != data["kind"]:
            raise RecordError(f"kind {data['kind']!r} differs from its identity's kind {ident_kind!r}")


@dataclass(frozen=True)
class Crash:
    """How the worker running a ``failed`` run died (``harness.executors``): the signal that killed
    it or its exit code, and where (``node``: the host name; ``pid``; ``executor``)."""

    node: str | None = None
    signal: int | None = None
    signal_name: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    executor: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class TrainRecord(Record):
    """A training run (``harness.train.execute``); status ``ok`` carries the scores."""

    candidate: str = ""
    task: str = ""
    tier: str = ""
    seed: int = 0
    lr: float = 0.0
    status: str = ""
    valid: Scores | None = None
    test: Scores | None = None
    valid_score: float | None = None
    valid_lengths: dict[str, LengthScores] | None = None
    test_lengths: dict[str, LengthScores] | None = None
    steps_done: int | None = None
    steps_to_solve: int | None = None
    error: str | None = None
    #: how many times this run has been tried (absent in older records: 1); ``--retries`` counts it
    attempts: int | None = None
    crash: Crash | None = None

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        for key in ("candidate", "task", "tier", "seed", "lr", "status"):
            if key not in data:
                raise RecordError(f"a train record needs {key!r}")
        if not math.isfinite(data["lr"]) or data["lr"] <= 0:
            raise RecordError(f"lr must be a finite number > 0, got {data['lr']!r}")
        ident = data["identity"]
        for key in ("candidate", "task", "tier", "seed", "lr"):
            if key in ident and ident[key] != data[key]:
                raise RecordError(
                    f"{key} {data[key]!r} differs from its identity's {key} {ident[key]!r}: "
                    "the content belongs to another run"
                )
        status = data["status"]
        if status not in TRAIN_STATUSES:
            raise RecordError(f"status must be one of {', '.join(TRAIN_STATUSES)}, got {_kind(status)}")
        if status == "ok":
            for key in ("valid", "test"):
                if data.get(key) is None:
                    raise RecordError(f"a record of status ok needs {key!r} scores")
            if data.get("valid_score") is not None:
                _fraction("valid_score", data["valid_score"])
        if data.get("attempts") is not None and data["attempts"] < 1:
            raise RecordError(f"attempts must be an integer >= 1, got {data['attempts']!r}")
        if data.get("crash") is not None and status != "failed":
            raise RecordError(f"a record with a 'crash' is a failed run, not status {status!r}")


@dataclass(frozen=True)
class BenchResult:
    status: str | None = None


@dataclass(frozen=True)
class BenchRecord(Record):
    """A microbenchmark measurement (``harness.bench``): its numbers live under ``result``."""

    result: BenchResult = dataclasses.field(default_factory=BenchResult)

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        if "result" not in data:
            raise RecordError("a benchmark record needs a 'result' object")


#: record kind -> its schema (other kinds: the common part, ``Record``)
SCHEMAS: dict[str, type] = {"train": TrainRecord, **dict.fromkeys(BENCH_KINDS, BenchRecord)}


def parse_record(
    data: Any, expected_kind: str | None = None, expected_id: str | None = None
) -> dict[str, Any]:
    """Check a record against its kind's schema; returns it unchanged or raises ``RecordError``.

    ``expected_kind`` / ``expected_id`` are what its place in the store says (folder, file name).
    The common part (``Record``) is checked first, so its reasons come first."""
    if not isinstance(data, dict):
        raise RecordError(f"a record is a JSON object, this is {_kind(data)}")
    _parse_fields(Record, data, "")
    if expected_kind is not None and data["kind"] != expected_kind:
        raise RecordError(f"kind {data['kind']!r} does not match its folder {expected_kind!r}")
    if expected_id is not None and data["run_id"] != expected_id:
        raise RecordError(f"run_id {data['run_id']!r} does not match its file name {expected_id!r}")
    schema = SCHEMAS.get(data["kind"])
    if schema is not None:
        _parse_fields(schema, data, "")
    return data


# -- files ------------------------------------------------------------------------------------------
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


def set_aside(path: Path) -> Path:
    """Rename ``path`` (a file or a folder) to ``<name>.corrupt`` (``.corrupt.N`` if taken)."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}")
        n += 1
    os.rename(path, target)
    return target


class RecordStore:
    """Records under ``<root>/runs/<kind>/<run_id>.json`` (kind: "train", "throughput", ...).

    ``on_corrupt`` is called with each ``CorruptRecord`` the moment a file is set aside (the CLI
    prints it); every one is also kept in ``set_aside``."""

    def __init__(
        self, root: str | Path = "results", on_corrupt: Callable[[CorruptRecord], None] | None = None
    ) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.on_corrupt = on_corrupt
        self.set_aside: list[CorruptRecord] = []

    def path_for(self, kind: str, run_id: str) -> Path:
        return self.runs / kind / f"{run_id}.json"

    def save(self, record: dict[str, Any]) -> Path:
        """Check ``record`` against the schema (a bad one is a bug: ``RecordError``) and write it."""
        for key in ("kind", "run_id", "identity"):
            if key not in record:
                raise RecordError(f"record needs a {key!r} field")
        record = {"schema": RECORD_SCHEMA, **record}
        # the schema sees what a reader will: the record as JSON gives it back
        parse_record(json.loads(dumps_strict(record, default=str)))
        path = self.path_for(record["kind"], record["run_id"])
        if path.is_dir():  # a folder in a record's place: set it aside, then write
            self._corrupt(path, "a folder, not a record file")
        atomic_write_json(path, record)
        return path

    def _corrupt(self, path: Path, reason: str) -> CorruptRecord:
        try:
            err = CorruptRecord(path, reason, moved_to=set_aside(path))
        except OSError as e:
            err = CorruptRecord(path, reason, move_error=e.strerror or str(e))
        self.set_aside.append(err)
        if self.on_corrupt is not None:
            self.on_corrupt(err)
        return err

    def load_path(self, path: Path) -> dict[str, Any]:
        """The record in ``path``, checked against the schema and against its place in the store;
        a file that fails is set aside and ``CorruptRecord`` raised."""
        try:
            if path.is_dir():
                raise RecordError("a folder, not a record file")
            text = path.read_bytes().decode("utf-8")
            if not text.strip():
                raise RecordError("the file is empty")
            data = json.loads(text)
            return parse_record(data, expected_kind=path.parent.name, expected_id=path.stem)
        except UnicodeDecodeError:
            raise self._corrupt(path, "not text (binary content)") from None
        except json.JSONDecodeError as e:
            raise self._corrupt(
                path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
            ) from None
        except RecordError as e:
            raise self._corrupt(path, str(e)) from None
        except OSError as e:
            raise self._corrupt(path, f"unreadable ({e.strerror or e})") from None

    def get(self, kind: str, run_id: str) -> dict[str, Any] | None:
        """The record, or None when there is none or it was corrupt (then it is set aside)."""
        path = self.path_for(kind, run_id)
        if not path.exists():
            return None
        try:
            return self.load_path(path)
        except CorruptRecord:
            return None

    def find(self, run_id: str) -> dict[str, Any]:
        """A record by id (or unique id prefix) across kinds; the id is matched, never globbed."""
        if not RUN_ID_RE.fullmatch(run_id):
            raise KeyError(
                f"{run_id!r} is not a run id; a run id is hex digits (e.g. 3fa2c1d09b7e4a51) or a unique "
                "prefix of one, as `harness run` and `harness compare` print them"
            )
        matches = [p for p in self._files() if p.stem.startswith(run_id) and p.suffix == ".json"]
        if not matches:
            raise KeyError(f"no record with run id {run_id!r} under {self.runs}")
        if len(matches) > 1:
            names = ", ".join(p.stem for p in matches[:6])
            raise KeyError(f"run id prefix {run_id!r} is ambiguous: {names}")
        return self.load_path(matches[0])

    def _files(self, kind: str | None = None) -> list[Path]:
        """Record files (``<kind>/*.json``), sorted; names are listed, never globbed from input."""
        if not self.runs.is_dir():
            return []
        kinds = [self.runs / kind] if kind else sorted(p for p in self.runs.iterdir() if p.is_dir())
        out = []
        for folder in kinds:
            if folder.is_dir():
                out.extend(
                    p for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith(".")
                )
        return sorted(out)

    def iter_records(self, kind: str | None = None) -> Iterator[dict[str, Any] | CorruptRecord]:
        """Every record (of ``kind``); corrupt files are set aside and yielded as ``CorruptRecord``."""
        for path in self._files(kind):
            try:
                yield self.load_path(path)
            except CorruptRecord as e:
                yield e

    def records(self, kind: str | None = None) -> tuple[list[dict[str, Any]], list[CorruptRecord]]:
        good, bad = [], []
        for r in self.iter_records(kind):
            (bad if isinstance(r, CorruptRecord) else good).append(r)
        return good, bad

    def corrupt_files(self) -> list[Path]:
        """Files set aside earlier (``*.corrupt``, ``*.corrupt.N``)."""
        if not self.runs.is_dir():
            return []
        return sorted(
            p
            for folder in self.runs.iterdir()
            if folder.is_dir()
            for p in folder.iterdir()
            if ".corrupt" in p.name
        )

    def remove_stale_temporaries(self, older_than: float = 60.0) -> list[Path]:
        """Delete the temporary files of writes that were killed (``.<name>.json.*.tmp``) older than
        ``older_than`` seconds (a write takes milliseconds, so an older one is nobody's); the paths."""
        import time

        removed = []
        now = time.time()
        for path in self.stray_files():
            if not path.name.endswith(".tmp"):
                continue
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed.append(path)
            except OSError:  # gone already (another sweep cleaned it), or not ours to delete
                pass
        return removed

    def stray_files(self) -> list[Path]:
        """Temporary files of writes that were killed (``.<name>.json.*.tmp``) and files out of place."""
        if not self.runs.is_dir():
            return []
        out = []
        for p in sorted(self.runs.iterdir()):
            if not p.is_dir():
                out.append(p)
                continue
            out.extend(q for q in sorted(p.iterdir()) if q.name.startswith(".") and q.name.endswith(".tmp"))
        return out
