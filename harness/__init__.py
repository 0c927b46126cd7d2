"""mixer-harness: the arena where sequence mixers meet head to head."""

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

__version__ = "0.1.0"

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
