"""What the benchmark commands share: candidate selection, dtypes, records, the progress bar."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from harness.environment import device_name, environment
from harness.registry import RegistryError, get_candidate, group_members, suggest
from harness.results import RecordStore, run_id_for

# One id per process: rows measured in the same process carry the same session, so a ratio to the
# baseline is only formed between numbers taken side by side.
SESSION = uuid.uuid4().hex[:12]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DTYPES:
        raise ValueError(suggest(name, [*DTYPES, *_ALIASES], "dtype"))
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def resolve_candidates(candidates: Sequence[str] | None = None, group: str | None = None) -> list[str]:
    """Names from an explicit list and/or a group ("all" = every registered candidate).

    Unknown names raise ``RegistryError`` with suggestions (the registry's message).
    """
    names: list[str] = []
    if group:
        names.extend(group_members(group))
    for n in candidates or ():
        get_candidate(n)  # raises RegistryError with suggestions
        if n not in names:
            names.append(n)
    if not names:
        raise RegistryError("no candidates selected: give --candidate/--candidates or --group")
    return names


def candidate_identity(name: str) -> dict[str, Any]:
    """The candidate part of a record identity: name, resolved hyperparameters, source hash."""
    spec = get_candidate(name)
    return {"candidate": name, "hparams": spec.validate_hparams({}), "source_hash": spec.source_hash()}


def device_identity(device: torch.device, threads: int) -> dict[str, Any]:
    return {"device": device.type, "device_name": device_name(device), "threads": threads}


class RecordWriter:
    """Builds and saves benchmark records: identity, run id, environment, session, timestamp."""

    def __init__(self, store: RecordStore | None, kind: str, device: torch.device) -> None:
        self.store, self.kind = store, kind
        self.env = environment(device)

    def cached(self, identity: dict[str, Any], force: bool) -> dict[str, Any] | None:
        """A stored finished record for this identity (status "ok"), unless forced. A record saved
        part-way (``complete`` false: a run stopped between its timing rounds) is measured again."""
        if self.store is None or force:
            return None
        rec = self.store.get(self.kind, run_id_for(identity))
        result = (rec or {}).get("result", {})
        if result.get("status") == "ok" and result.get("complete", True):
            return rec
        return None

    def save(self, identity: dict[str, Any], result: dict[str, Any], config: dict[str, Any]) -> dict:
        record = {
            "kind": self.kind,
            "run_id": run_id_for(identity),
            "identity": identity,
            "result": result,
            "config": config,
            "environment": self.env,
            "session": SESSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.store is not None:
            self.store.save(record)
        return record


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg)


def short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def flatten_unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for it in items:
        for part in str(it).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out
