"""Labelled variants: a registered candidate with hyperparameters set in its name.

``diagonal[d_state=8]`` is ``diagonal`` built with ``d_state=8``. The label is a name like any other:
``harness run --candidate 'diagonal[d_state=8]'``, ``harness bench throughput --candidates
'diagonal[d_state=8]'`` and ``harness compare --sweep d_state=4,8`` all resolve it through the
registry (``harness.registry.get_candidate``), records carry it as their ``candidate``, and the run
identity holds the resolved hyperparameters, so each variant has its own records. A leaderboard row
is therefore reproducible from its name alone, as for registered variants (``deltanet-neg``).

Syntax: ``BASE[key=value,key=value]``. ``BASE`` is any resolvable name (a registered candidate, a
modifier name such as ``diagonal+gate``); values are Python literals (``8``, ``0.5``, ``(1,2)``),
``true``/``false``, or else plain strings. The canonical label (what records carry) has its keys
sorted and no spaces: ``canonical_name(" diagonal[ d_state = 8 ]")`` is ``diagonal[d_state=8]``.

A sweep (``--sweep d_state=4,8,16,32``) turns each candidate that has the hyperparameter into one
variant per value (``expand_sweep``); a candidate without it is not swept, and the sweep says so.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable, Sequence
from typing import Any


class VariantError(ValueError):
    """A malformed variant label or sweep (a usage error)."""


def literal(text: str) -> Any:
    """A value as written on the command line: a Python literal, true/false, else the string."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets and quotes: ``"a=(1,2),b=3"`` -> ``["a=(1,2)", "b=3"]``."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def is_variant(name: str) -> bool:
    name = name.strip()
    return name.endswith("]") and "[" in name


def parse_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``"diagonal[d_state=8]"`` -> ``("diagonal", {"d_state": 8})``; a plain name -> ``(name, {})``."""
    name = name.strip()
    if not is_variant(name):
        return name, {}
    base, _, body = name[:-1].partition("[")
    base = base.strip()
    if not base:
        raise VariantError(f"variant label {name!r} has no candidate name before '['")
    overrides: dict[str, Any] = {}
    for item in split_top(body):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not key.isidentifier():
            raise VariantError(
                f"variant label {name!r}: expected key=value inside [...], got {item.strip()!r}"
            )
        if key in overrides:
            raise VariantError(f"variant label {name!r} sets {key!r} twice")
        overrides[key] = literal(value)
    if not overrides:
        raise VariantError(f"variant label {name!r} sets no hyperparameter (write {base}[key=value])")
    return base, overrides


def format_value(value: Any) -> str:
    """How a value is written in a label (``literal`` reads it back to the same value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if literal(value) == value and "," not in value and "]" not in value else repr(value)
    return repr(value).replace(" ", "")


def variant_name(base: str, overrides: dict[str, Any]) -> str:
    """The canonical label: keys sorted, no spaces; ``base`` alone when there is nothing to set."""
    if not overrides:
        return base
    return base + "[" + ",".join(f"{k}={format_value(overrides[k])}" for k in sorted(overrides)) + "]"


def canonical_name(name: str) -> str:
    """The canonical spelling of a name (unchanged unless it is a variant label)."""
    if not is_variant(name):
        return name
    base, overrides = parse_variant(name)
    return variant_name(base, overrides)


def split_label(name: str) -> tuple[str, dict[str, Any]]:
    """``parse_variant`` for display: a name that is not a well-formed label is its own base."""
    try:
        return parse_variant(name)
    except VariantError:
        return name, {}


def base_name(name: str) -> str:
    """The candidate a variant label is built from (the name itself otherwise)."""
    return split_label(name)[0]


# -- sweeps ------------------------------------------------------------------------------------------
def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``"d_state=4,8,16,32"`` -> ``("d_state", [4, 8, 16, 32])``."""
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise VariantError(f"--sweep expects key=v1,v2,..., got {text!r}")
    parsed = [literal(v) for v in split_top(values) if v.strip()]
    if not parsed:
        raise VariantError(f"--sweep {text!r} lists no values")
    if len(set(map(repr, parsed))) != len(parsed):
        raise VariantError(f"--sweep {text!r} lists a value twice")
    return key, parsed


def expand_sweep(
    candidates: Sequence[str],
    sweeps: Sequence[tuple[str, list[Any]]],
    hparams_of: Callable[[str], dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """Each candidate that has the swept hyperparameters becomes one variant per value (the product
    over several sweeps); one without any of them stays as it is. Returns ``(names, notes)``, the
    notes saying which candidates were not swept and why. ``hparams_of(name)`` gives a name's
    hyperparameters with their defaults. Raises ``VariantError`` when no candidate has a swept key."""
    out: list[str] = []
    notes: list[str] = []
    seen_keys: set[str] = set()
    swept_keys = {key for key, _ in sweeps}
    for cand in candidates:
        allowed = hparams_of(cand)
        seen_keys.update(allowed)
        present = [(k, vals) for k, vals in sweeps if k in allowed]
        missing = [k for k, _ in sweeps if k not in allowed]
        if missing:
            has = ", ".join(sorted(allowed)) or "none"
            what = "is not swept and runs at its defaults" if not present else "is swept over the others"
            notes.append(
                f"sweep: {cand} has no hyperparameter {', '.join(repr(k) for k in missing)} "
                f"(its hyperparameters: {has}); it {what}"
            )
        if not present:
            out.append(cand)
            continue
        base, fixed = parse_variant(cand)
        for combo in itertools.product(*(vals for _, vals in present)):
            overrides = {**fixed, **{k: v for (k, _), v in zip(present, combo)}}
            out.append(variant_name(base, overrides))
    if not swept_keys & seen_keys:
        import difflib

        keys = ", ".join(sorted(swept_keys))
        close = difflib.get_close_matches(sorted(swept_keys)[0], sorted(seen_keys), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise VariantError(f"--sweep {keys}: no selected candidate has that hyperparameter{hint}")
    return list(dict.fromkeys(out)), notes
