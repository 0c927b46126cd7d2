"""Registries of candidates, tasks and modifiers.

A candidate is registered once, by name, and everything else (training, conformance, benchmarks,
leaderboards) finds it here. Variants are separate names with preset hyperparameters, so a
leaderboard row is reproducible from its name alone. Third-party packages add candidates and tasks
through the entry-point groups ``mixer_harness.candidates`` and ``mixer_harness.tasks``: each entry
point names a module (importing it registers) or a callable (called with no arguments).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.identity import class_source_hash

CANDIDATE_ENTRY_POINTS = "mixer_harness.candidates"
TASK_ENTRY_POINTS = "mixer_harness.tasks"


class RegistryError(KeyError):
    """Unknown or duplicate name; the message names the value and what is allowed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def suggest(name: str, choices: Iterable[str], what: str, owner: str = "") -> str:
    """An error message for an unknown ``name`` that lists the closest known names; ``owner``
    (e.g. "of candidate 'softmax'") follows ``what``: "unknown hyperparameter 'x' of candidate ..."."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=4, cutoff=0.5)
    if not close:
        close = [c for c in choices if name.lower() in c.lower() or c.lower() in name.lower()][:4]
    of = f" {owner}" if owner else ""
    msg = f"unknown {what} {name!r}{of}"
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return msg + f" (known {what}s{of}: {shown or 'none'})"


@dataclass(frozen=True)
class CandidateSpec:
    """What the registry knows of a candidate: its class and the preset hyperparameters of this name."""

    name: str
    cls: type
    groups: tuple[str, ...]
    reference: str
    preset: dict[str, Any] = field(default_factory=dict)
    modifier: str | None = None  # set for names built by a modifier, e.g. "gate"
    base: str | None = None  # the modified candidate's name for modifier names
    applies: tuple[Callable[[Any], None], ...] = ()  # modifiers' changes to a built mixer, in order

    @property
    def hparam_defaults(self) -> dict[str, Any]:
        """Constructor defaults of the class, overlaid with this name's preset."""
        out = dict(constructor_defaults(self.cls))
        out.update(self.preset)
        return out

    def validate_hparams(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Resolved hyperparameters (defaults + preset + overrides); unknown keys are errors."""
        allowed = self.hparam_defaults
        for key in overrides:
            if key not in allowed:
                raise RegistryError(suggest(key, allowed, "hyperparameter", f"of candidate {self.name!r}"))
        resolved = dict(allowed)
        resolved.update(overrides)
        return resolved

    def build(self, d_model: int, **overrides: Any):
        """Instantiate the mixer: ``cls(d_model, **resolved_hparams)``, then the modifier's change."""
        hp = self.validate_hparams(overrides)
        mixer = self.cls(d_model, **hp)
        for apply in self.applies:
            apply(mixer)
        return mixer

    def source_hash(self) -> str:
        """Hash of the source files the candidate's behaviour depends on (``harness.identity``).

        Part of a run's identity: editing a candidate or a kernel it calls invalidates its results.
        A modifier name adds the modifier's module (and what it imports) to its base's sources.
        """
        return class_source_hash(self.cls, tuple(apply.__module__ for apply in self.applies))

    @property
    def needs_cuda(self) -> bool:
        return bool(getattr(self.cls, "needs_cuda", False))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    cls: type
    reference: str

    def source_hash(self) -> str:
        """Hash of the task module and what it imports (``harness.identity``)."""
        return class_source_hash(self.cls)


@dataclass(frozen=True)
class ModifierSpec:
    """A change that turns any candidate ``X`` into ``X+<name>`` without registering each pair:
    ``apply(mixer)`` modifies a built mixer through the hooks of the ``Mixer`` contract."""

    name: str
    apply: Callable[[Any], None]
    groups: tuple[str, ...]
    reference: str


_CANDIDATES: dict[str, CandidateSpec] = {}
_TASKS: dict[str, TaskSpec] = {}
_MODIFIERS: dict[str, ModifierSpec] = {}
_GROUP_MEMBERS: dict[str, list[str]] = {}  # explicit group members added by name (e.g. "x+gate")
_LOADED = False


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Keyword parameters (with defaults) of ``cls.__init__`` after ``d_model``."""
    sig = inspect.signature(cls.__init__)
    out: dict[str, Any] = {}
    for pname, p in list(sig.parameters.items())[2:]:  # skip self, d_model
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__}.__init__ parameter {pname!r} needs a default")
        out[pname] = p.default
    return out


def register_candidate(
    name: str, groups: Iterable[str] = (), reference: str = "", **preset: Any
) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name``; stack it to register variants.

    ``preset`` sets hyperparameters for this name (``deltanet-neg`` = DeltaNet with
    ``allow_negative=True``). Every preset key must be a constructor parameter.
    """

    def deco(cls: type) -> type:
        defaults = constructor_defaults(cls)
        for key in preset:
            if key not in defaults:
                raise RegistryError(suggest(key, defaults, "hyperparameter", f"of {cls.__name__}"))
        base, plus, suffix = name.rpartition("+")
        if plus and base and suffix in _MODIFIERS:
            raise RegistryError(f"candidate name {name!r} ends in '+{suffix}', which names a modifier")
        existing = _CANDIDATES.get(name)
        if existing is not None and qualname(existing.cls) != qualname(cls):
            raise RegistryError(_twice("candidate", name, existing.cls, cls))
        _CANDIDATES[name] = CandidateSpec(name, cls, tuple(groups), reference, dict(preset))
        return cls

    return deco


def register_task(name: str, reference: str = "") -> Callable[[type], type]:
    def deco(cls: type) -> type:
        existing = _TASKS.get(name)
        if existing is not None and qualname(existing.cls) != qualname(cls):
            raise RegistryError(_twice("task", name, existing.cls, cls))
        cls.name = name
        _TASKS[name] = TaskSpec(name, cls, reference or getattr(cls, "reference", ""))
        return cls

    return deco


def register_modifier(
    name: str, groups: Iterable[str] = (), reference: str = ""
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register a modifier: ``apply(mixer)`` changes a built mixer into ``<name>+<modifier>``'s."""

    def deco(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        _MODIFIERS[name] = ModifierSpec(name, fn, tuple(groups), reference)
        return fn

    return deco


def add_to_group(group: str, *names: str) -> None:
    """Put already-resolvable names (including modifier names like ``diagonal+gate``) in a group."""
    members = _GROUP_MEMBERS.setdefault(group, [])
    for n in names:
        if n not in members:
            members.append(n)


def _twice(what: str, name: str, first: type, second: type) -> str:
    msg = f"{what} {name!r} is registered twice: by {qualname(first)} and {qualname(second)}"
    mods = sorted([first.__module__, second.__module__], key=len)
    if mods[1] == f"harness.{mods[0]}":
        msg += (
            f"; the module was imported twice, as {mods[0]!r} and {mods[1]!r}: import the built-in "
            "folders only as harness.candidates / harness.tasks / harness.kernels"
        )
    return msg


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class PluginError:
    """An entry point that failed to load: which one, and the error in one line."""

    group: str
    name: str
    value: str
    error: str

    def __str__(self) -> str:
        return (
            f"plug-in entry point {self.name!r} ({self.group}: {self.value}) failed to load: {self.error}; "
            "its candidates and tasks are unavailable, everything else works"
        )


_PLUGIN_ERRORS: list[PluginError] = []


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _load_entry_points(group: str) -> None:
    """Load every entry point of ``group``; one that raises is reported once (stderr and
    ``plugin_errors()``) and skipped, so one broken package does not take the others down."""
    from importlib import metadata  # here: importing the registry stays quick (``harness --help``)

    for ep in metadata.entry_points(group=group):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj) and not inspect.isclass(obj):
                obj()
        except (Exception, SystemExit) as e:  # a plug-in's own bug, whatever it is
            err = PluginError(group, ep.name, ep.value, _one_line(e))
            if err not in _PLUGIN_ERRORS:
                _PLUGIN_ERRORS.append(err)
                print(f"harness: warning: {err}", file=sys.stderr)


def plugin_errors() -> list[PluginError]:
    """Entry points that failed to load in this process."""
    load_plugins()
    return list(_PLUGIN_ERRORS)


def load_plugins() -> None:
    """Import the built-in candidates and tasks, then every installed entry point (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    importlib.import_module("harness.candidates")
    importlib.import_module("harness.tasks")
    _load_entry_points(CANDIDATE_ENTRY_POINTS)
    _load_entry_points(TASK_ENTRY_POINTS)


def reload_plugins() -> None:
    """Look for entry points again (e.g. after installing a plugin package in this process)."""
    global _LOADED
    _LOADED = False
    _PLUGIN_ERRORS.clear()
    load_plugins()


def unregister(name: str) -> None:
    """Remove a candidate or task (tests that register temporary ones clean up with this)."""
    _CANDIDATES.pop(name, None)
    _TASKS.pop(name, None)


def candidate_names() -> list[str]:
    load_plugins()
    return sorted(_CANDIDATES)


def task_names() -> list[str]:
    load_plugins()
    return sorted(_TASKS)


def modifier_names() -> list[str]:
    load_plugins()
    return sorted(_MODIFIERS)


def get_candidate(name: str) -> CandidateSpec:
    """Resolve a candidate name, including ``base+modifier`` names and variant labels
    (``diagonal[d_state=8]``: ``harness.variants``)."""
    load_plugins()
    if name in _CANDIDATES:
        return _CANDIDATES[name]
    if name.endswith("]") and "[" in name:
        return _variant(name)
    if "+" in name:
        base_name, _, mod_name = name.rpartition("+")
        if mod_name not in _MODIFIERS:
            raise RegistryError(suggest(mod_name, _MODIFIERS, "modifier", f"in {name!r}"))
        base = get_candidate(base_name)
        mod = _MODIFIERS[mod_name]
        return CandidateSpec(
            name,
            base.cls,
            tuple(mod.groups),
            f"{base.reference} + {mod.reference}".strip(" +"),
            dict(base.preset),
            modifier=mod_name,
            base=base.name,
            applies=(*base.applies, mod.apply),
        )
    raise RegistryError(suggest(name, list(_CANDIDATES), "candidate") + _plugin_note())


def _plugin_note() -> str:
    if not _PLUGIN_ERRORS:
        return ""
    names = ", ".join(repr(e.name) for e in _PLUGIN_ERRORS)
    return f" (plug-in entry point(s) {names} failed to load: see the warning above)"


def _variant(name: str) -> CandidateSpec:
    """A variant label: its base name's spec with the label's hyperparameters added to the preset."""
    from harness.variants import parse_variant, variant_name

    base_name, overrides = parse_variant(name)
    base = get_candidate(base_name)
    allowed = base.hparam_defaults
    for key in overrides:
        if key not in allowed:
            msg = suggest(key, allowed, "hyperparameter", f"of candidate {base.name!r}")
            raise RegistryError(f"{msg}; in the variant label {name!r}")
    return dataclasses.replace(
        base, name=variant_name(base.name, overrides), preset={**base.preset, **overrides}
    )


def get_task(name: str) -> TaskSpec:
    load_plugins()
    if name not in _TASKS:
        raise RegistryError(suggest(name, _TASKS, "task") + _plugin_note())
    return _TASKS[name]


def groups() -> dict[str, list[str]]:
    """Group name -> member candidate names (registered groups plus explicit additions)."""
    load_plugins()
    out: dict[str, list[str]] = {}
    for spec in _CANDIDATES.values():
        for g in spec.groups:
            out.setdefault(g, []).append(spec.name)
    for g, names in _GROUP_MEMBERS.items():
        bucket = out.setdefault(g, [])
        bucket.extend(n for n in names if n not in bucket)
    return {g: sorted(v, key=_group_sort_key) for g, v in sorted(out.items())}


def _group_sort_key(name: str) -> tuple[str, int]:
    base, _, mod = name.partition("+")
    return (base, 1 if mod else 0)


def group_members(group: str) -> list[str]:
    all_groups = groups()
    if group == "all":
        return candidate_names()
    if group not in all_groups:
        raise RegistryError(suggest(group, [*all_groups, "all"], "group"))
    return all_groups[group]
