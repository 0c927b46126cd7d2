"""mixer-harness: the arena where sequence mixers meet head to head.

The public names (``from harness import Mixer, register_candidate, ...``) are loaded on first use
(PEP 562), so that importing a light submodule such as ``harness.cli`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    "Mixer": "harness.mixer",
    "State": "harness.mixer",
    "count_params": "harness.mixer",
    "measure_state": "harness.mixer",
    "RegistryError": "harness.registry",
    "add_to_group": "harness.registry",
    "get_candidate": "harness.registry",
    "get_task": "harness.registry",
    "register_candidate": "harness.registry",
    "register_modifier": "harness.registry",
    "register_task": "harness.registry",
    "IGNORE": "harness.task",
    "Batch": "harness.task",
    "Task": "harness.task",
}

__all__ = [
    "IGNORE",
    "Batch",
    "Mixer",
    "RegistryError",
    "State",
    "Task",
    "add_to_group",
    "count_params",
    "get_candidate",
    "get_task",
    "measure_state",
    "register_candidate",
    "register_modifier",
    "register_task",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from harness.mixer import Mixer, State, count_params, measure_state
    from harness.registry import (
        RegistryError,
        add_to_group,
        get_candidate,
        get_task,
        register_candidate,
        register_modifier,
        register_task,
    )
    from harness.task import IGNORE, Batch, Task


def version() -> str:
    """The installed distribution's version (``harness --version``), without importing torch."""
    from importlib import metadata

    try:
        return metadata.version("mixer-harness")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return version()
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "__version__"])
