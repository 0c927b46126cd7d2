"""Run identity: what fixes a result, and the hash that names it.

A run's ``identity`` (built by ``harness.train.resolve``) holds every value that fixes its result —
candidate and resolved hyperparameters, task and config, tier settings, seed, learning rate,
device — and the hashes of every source file that computes it. Its hash is the record's
``run_id``, so editing any such file, or changing any such value, gives a new id and the old
record is not reused.

Which sources: the *import closure* of three roots, read from the modules' own import statements
(AST), following every module of this project (``harness.*``) and, for an out-of-repo plug-in, every
module of the plug-in's own top-level package:
  - the candidate: every module of its class's MRO (the candidate, a shared shell such as the
    transitions base, a modifier's wrapped class) and what they import (kernels, helpers);
  - the task: its module and what it imports (``tasks/_common.py``, ...);
  - the engine: ``harness.training`` (backbone, training loop, evaluation, data splits, tiers) and
    what it imports.
Left out, by name (``NOT_HASHED``): the registry and the package's ``__init__``, which map a name to
a class and resolve its settings; what they produce (the class, whose sources are hashed, and the
resolved values) is itself part of the identity, so their own code does not fix a result.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PROJECT = "harness"
NOT_HASHED = frozenset({"harness", "harness.registry"})
ENGINE_ROOTS = ("harness.training",)
_OUTSIDE = frozenset({"builtins", "abc", "typing", "torch", "collections", "enum", "dataclasses"})


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_id_for(identity: dict[str, Any]) -> str:
    """Stable 16-hex id of an identity dict (key order does not matter)."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def imported_modules(module_name: str) -> list[str]:
    """Loaded modules that ``module_name`` imports (absolute, relative resolved), from its AST."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return []
    st = Path(path).stat()
    return [n for n in _parsed_imports(module_name, path, st.st_mtime_ns, st.st_size) if n in sys.modules]


@functools.cache
def _parsed_imports(module_name: str, path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """Every name a file imports; cached until the file changes (mtime, size)."""
    package = module_name if Path(path).name == "__init__.py" else module_name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return tuple(names)


def closure(roots: Iterable[str]) -> list[str]:
    """Module names reachable from ``roots`` through imports of this project or of the roots' own
    top-level packages (a plug-in's package); ``NOT_HASHED`` modules are neither kept nor followed."""
    roots = [r for r in roots if r.split(".")[0] not in _OUTSIDE and r in sys.modules]
    packages = {PROJECT} | {r.split(".")[0] for r in roots}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_HASHED:
            continue
        seen.add(name)
        todo.extend(m for m in imported_modules(name) if m.split(".")[0] in packages)
    return sorted(seen)


def source_files(modules: Iterable[str]) -> list[Path]:
    files = []
    for name in modules:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and path.endswith(".py") and Path(path) not in files:
            files.append(Path(path))
    return sorted(files)


def class_sources(cls: type) -> list[Path]:
    """The source files a class's behaviour depends on: its MRO's modules and their closure."""
    return source_files(closure(k.__module__ for k in cls.__mro__))


def engine_sources() -> list[Path]:
    import importlib

    for root in ENGINE_ROOTS:
        importlib.import_module(root)
    return source_files(closure(ENGINE_ROOTS))


def hash_files(files: Iterable[Path]) -> str:
    """sha256 (16 hex) over the files' names relative to their package and contents."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(read_source(f))
    return h.hexdigest()[:16]


def read_source(path: Path) -> bytes:
    """A source file's bytes (one place, so a test can show that editing a file changes an id)."""
    return path.read_bytes()


def class_source_hash(cls: type, extra_modules: tuple[str, ...] = ()) -> str:
    """Hash of ``class_sources(cls)`` plus the closure of ``extra_modules`` (a modifier's module);
    recomputed when any of those files changes on disk."""
    files = class_sources(cls)
    if extra_modules:
        files = sorted(set(files) | set(source_files(closure(extra_modules))))
    return _hash_stamped(_stamp(files))


def engine_source_hash() -> str:
    return _hash_stamped(_stamp(engine_sources()))


@functools.lru_cache(maxsize=256)
def _hash_stamped(stamp: tuple) -> str:
    return hash_files(Path(p) for p, _, _ in stamp)


def _stamp(files: list[Path]) -> tuple:
    """(path, mtime_ns, size) per file: a cheap key that changes when a file is edited."""
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)
