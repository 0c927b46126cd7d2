"""Input validation: every value a command takes is checked before any run starts (DESIGN §10).

A bad value is a ``UsageError`` (the CLI prints it as one line and exits 2) that names the flag, the
value, what is allowed and, where there is one, the closest valid value. Nothing here writes a
record.

What is checked, and how:

- **Flag values** (``--seeds``, ``--lrs``, ``--jobs``, ``--batch``, ...): argparse types from this
  module (``int_at_least``, ``positive_number``, ``number_list``, ...), so a bad value is an
  argparse usage error naming the flag.
- **Hyperparameters** (``--set key=value``): the type follows the constructor's default (an int
  default takes ints, a float default takes finite numbers, a bool default takes true/false, a
  tuple default takes a sequence, a string default takes a string); an int whose default is
  ``>= 0`` (a size or a count) takes no negative value. Then a *trial build*: the candidate is
  built with the resolved values at the tier's ``d_model`` on CPU and runs a tiny forward (B=1,
  T=4). If that raises while the candidate's own defaults build, the override is the culprit and
  the error says so, with the exception in plain words and, for an int, the nearby values that do
  build (e.g. the divisors of ``d_model`` for a head count). If the defaults fail too, the
  candidate itself is broken: that is not a usage error, the run is recorded as ``failed``.
  Constraints are not declared by candidates: they are read from the signature and found by the
  trial build, so a plug-in gets the same checks.
- **Training settings** (``--train-set``): each ``TierConfig`` field by type and range
  (``TRAIN_RULES``).
- **Task settings** (``--task-set``): by the field's default type, then by building the task's
  config, whose own checks raise ``ValueError`` with the reason.
- **Device**: its form while parsing (``device_arg``: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` where
  the command takes it), then, when the command runs, present on this machine (``check_device``).
- **Paths**: a results directory must be a directory we can create or write; an output file must
  not be a directory and its folder must be writable.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import UsageError  # noqa: F401 - the one usage error type, re-exported
from harness.registry import RegistryError, get_candidate, get_task, suggest


# -- plain words for values --------------------------------------------------------------------------
def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return f"the bool {value}"
    if isinstance(value, int):
        return f"the int {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    if isinstance(value, (tuple, list)):
        return "a sequence"
    return f"a {type(value).__name__}"


def _closest(value: float, allowed: Sequence[Any]) -> Any | None:
    nums = [a for a in allowed if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if not nums or not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return None
    return min(nums, key=lambda a: (abs(a - value), a))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- argparse types -----------------------------------------------------------------------------------
def _parse_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum`` (argparse names the flag in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{value} is not allowed; allowed: an integer >= {minimum} (closest: {minimum})"
            )
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _parse_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; allowed: a finite number > 0")
    return value


def number_at_least(minimum: float) -> Callable[[str], float]:
    """argparse type: a finite number >= ``minimum``."""

    def parse(text: str) -> float:
        value = _parse_number(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{text} is not allowed; allowed: a finite number >= {minimum:g}"
            )
        return value

    parse.__name__ = f"number >= {minimum:g}"
    return parse


def learning_rate(text: str) -> float:
    """argparse type: a learning rate, a finite number > 0 (e.g. 3e-3)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; a learning rate is a finite number > 0, e.g. 3e-3"
        )
    return value


def _list_items(text: str, what: str) -> list[str]:
    """The stripped items of a comma-separated flag value; no value or an empty item is refused."""
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} (no value)")
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} (an empty item)")
    return items


def number_list(minimum_exclusive: float | None = 0.0, what: str = "numbers") -> Callable[[str], list[float]]:
    """argparse type: comma-separated finite numbers (> ``minimum_exclusive``); empty items refused."""

    def parse(text: str) -> list[float]:
        out = []
        for item in _list_items(text, what):
            try:
                value = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not a number") from None
            if not math.isfinite(value) or (minimum_exclusive is not None and value <= minimum_exclusive):
                bound = f" > {minimum_exclusive:g}" if minimum_exclusive is not None else ""
                raise argparse.ArgumentTypeError(
                    f"{item} in {text!r} is not allowed; allowed: finite numbers{bound}"
                )
            if value not in out:
                out.append(value)
        return out

    parse.__name__ = what
    return parse


def int_list(minimum: int = 1, what: str = "integers") -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers >= ``minimum``; empty items refused."""

    def parse(text: str) -> list[int]:
        out = []
        for item in _list_items(text, what):
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not an integer") from None
            if value < minimum:
                raise argparse.ArgumentTypeError(
                    f"{value} in {text!r} is not allowed; allowed: integers >= {minimum}"
                )
            if value not in out:
                out.append(value)
        return out

    parse.__name__ = what
    return parse


def name_list(flag: str, text: str | None, allow_empty: bool = False) -> list[str]:
    """Comma-separated names (commas inside a variant label's brackets stay: ``x[a=1,b=2]``); a
    value that names nothing (``','``) is an error unless allowed."""
    from harness.variants import split_top

    names = [n.strip() for n in split_top(text or "") if n.strip()]
    if not names and text is not None and not allow_empty:
        raise UsageError(f"{flag} {text!r} names nothing; expected comma-separated names")
    return names


# -- typed values by example ---------------------------------------------------------------------------
def check_like(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace ``default``, in words ("takes an integer, got text 'abc'"), or
    None when it fits.

    The rule: same kind as the default (int -> int, float -> finite number, bool -> true/false,
    tuple -> sequence, str -> text); ints whose default is >= 0 are sizes or counts: not negative.
    """
    got = f", got {_kind_of(value)}"
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"takes true or false{got}"
    if isinstance(default, int):
        if not is_int(value):
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                return f"takes an integer (write {int(value)}, not {value!r})"
            return f"takes an integer{got}"
        if default >= 0 and value < 0:
            return "takes an integer >= 0 (a size or a count)"
        return None
    if isinstance(default, float):
        if not is_number(value):
            return f"takes a number{got}"
        if not math.isfinite(value):
            return "takes a finite number (not nan or inf)"
        return None
    if isinstance(default, str):
        return None if isinstance(value, str) else f"takes text{got}"
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            return f"takes a sequence, e.g. (1, 2){got}"
        sample = next(iter(default), None)
        for v in value:
            why = check_like(sample, v) if sample is not None else None
            if why is not None:
                return f"takes a sequence whose items each {why.removeprefix('takes ')}"
        return None
    return None


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# -- hyperparameters -------------------------------------------------------------------------------------
#: a trial build refuses a mixer layer with more parameters than this (counted on the meta device)
MAX_TRIAL_PARAMS = 1 << 27


class TooBig(Exception):
    """A trial build refused for its size (said in words, no exception name needed)."""


def _trial(spec, d_model: int, hparams: dict[str, Any]) -> BaseException | None:
    """Build the candidate at ``d_model`` on CPU and run a tiny forward; the exception, if any.

    The layer is first built on the meta device (no memory) to count its parameters, so a value
    like ``d_state=10**8`` is refused instead of exhausting the machine's memory."""
    import torch

    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in spec.build(d_model, **hparams).parameters())
    except Exception:  # a constructor that cannot run on meta is tried for real below
        n_params = 0
    if n_params > MAX_TRIAL_PARAMS:
        return TooBig(
            f"one layer would have {n_params:,} parameters (the trial build stops at {MAX_TRIAL_PARAMS:,})"
        )
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            mixer = spec.build(d_model, **hparams)  # as training builds it (a modifier included)
            y = mixer(torch.randn(1, 4, d_model))
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != (1, 4, d_model):
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                return ValueError(f"forward returned {shape} for an input of shape (1, 4, {d_model})")
    except Exception as e:  # any failure is the answer we want
        return e
    return None


def _words(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    if isinstance(exc, TooBig):
        return text
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__


def _int_probes(d_model: int, default: Any, value: int) -> list[int]:
    """Values to try in place of a failing int: divisors of d_model, powers of two, the default."""
    cap = max(d_model, 64)
    probes = {d for d in range(1, d_model + 1) if d_model % d == 0}
    probes.update(1 << k for k in range(cap.bit_length()) if 1 << k <= cap)
    if is_int(default) and 0 <= default <= 4 * cap:
        probes.add(default)
    if 0 <= value <= cap:
        probes.add(value)
    return sorted(probes)


def check_hparams(
    candidate: str,
    overrides: dict[str, Any],
    d_model: int,
    flag: str = "--set",
    d_model_flag: str | None = None,
) -> dict[str, Any]:
    """Validate ``--set`` overrides of ``candidate`` (names, types, a trial build); the resolved values.

    ``d_model_flag`` names where a non-default ``d_model`` came from (``--train-set d_model=...``),
    so a width the candidate cannot take is blamed on that flag.
    """
    spec = get_candidate(candidate)
    defaults = spec.hparam_defaults
    for key in overrides:
        if key not in defaults:
            raise UsageError(
                f"{flag} {key}=...: "
                + suggest(key, defaults, "hyperparameter", f"of candidate {candidate!r}")
            )
    for key, value in overrides.items():
        why = check_like(defaults[key], value)
        if why is not None:
            hint = ""
            if is_int(value) and value < 0:
                others = {k: v for k, v in overrides.items() if k != key}
                hint = _int_hint(spec, d_model, {**defaults, **others}, key, value)
            raise UsageError(
                f"{flag} {key}={_show(value)}: {candidate}'s {key} {why} (default {defaults[key]!r}){hint}"
            )
    resolved = spec.validate_hparams(overrides)
    if spec.needs_cuda or (not overrides and d_model_flag is None):
        # nothing of the user's to try (a candidate's own defaults are its conformance checks'
        # business, and a crashing one must not take this process down), or no CPU to try it on
        return resolved
    err = _trial(spec, d_model, resolved)
    if err is None:
        return resolved
    if overrides and _trial(spec, d_model, spec.validate_hparams({})) is None:
        raise UsageError(_blame_override(spec, candidate, overrides, d_model, err, flag))
    if d_model_flag is not None:
        raise UsageError(
            f"{d_model_flag} d_model={d_model}: {spec.cls.__name__} ({candidate}) could not be built at that "
            f"width: {_words(err)}"
        )
    return resolved  # the candidate fails with its own defaults: a broken candidate, recorded as failed


def _blame_override(spec, candidate: str, overrides: dict[str, Any], d_model: int, err, flag: str) -> str:
    """The message for overrides that break a build the defaults pass: one culprit where we can tell."""
    base = spec.validate_hparams({})
    culprits = [k for k in overrides if _trial(spec, d_model, {**base, k: overrides[k]}) is not None]
    shown = " ".join(f"{k}={_show(v)}" for k, v in overrides.items() if not culprits or k in culprits)
    msg = f"{flag} {shown}: {spec.cls.__name__} ({candidate}) could not be built at d_model={d_model}: {_words(err)}"
    if len(culprits) == 1:
        key = culprits[0]
        value = overrides[key]
        others = {k: v for k, v in overrides.items() if k != key}
        if is_int(value):
            msg += _int_hint(spec, d_model, {**base, **others}, key, value)
        else:
            msg += f"; the default {key}={_show(base[key])} builds"
    elif not culprits:
        msg += "; each value builds alone, not together"
    return msg


def _int_hint(spec, d_model: int, hparams: dict[str, Any], key: str, value: int) -> str:
    """ "; values of KEY that build: ...; closest: N" from trial builds of nearby values ("" if none)."""
    if spec.needs_cuda:
        return ""
    good = [
        v
        for v in _int_probes(d_model, spec.hparam_defaults.get(key), value)
        if v != value and _trial(spec, d_model, {**hparams, key: v}) is None
    ]
    if not good:
        return ""
    shown = ", ".join(str(v) for v in good[:10]) + (", ..." if len(good) > 10 else "")
    divides = all(v and d_model % v == 0 for v in good) and len(good) < d_model
    rule = f" (divisors of d_model={d_model})" if divides else ""
    return (
        f"; values of {key} that build at d_model={d_model}: {shown}{rule}; closest: {_closest(value, good)}"
    )


# -- training settings -----------------------------------------------------------------------------------
def _int_rule(minimum: int) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        if not is_int(v):
            return f"takes an integer >= {minimum}"
        return None if v >= minimum else f"takes an integer >= {minimum} (closest: {minimum})"

    return rule


def _float_rule(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> Callable[[Any], str | None]:
    lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    hi = "" if high is None else (f"< {high:g}" if high_open else f"<= {high:g}")
    allowed = "a finite number " + " and ".join(x for x in (lo, hi) if x)

    def rule(v: Any) -> str | None:
        if not is_number(v) or not math.isfinite(v):
            return f"takes {allowed.strip()}"
        if low is not None and (v <= low if low_open else v < low):
            return f"takes {allowed.strip()}"
        if high is not None and (v >= high if high_open else v > high):
            return f"takes {allowed.strip()}"
        return None

    return rule


def _lrs_rule(v: Any) -> str | None:
    if is_number(v):
        v = (v,)
    if not isinstance(v, (tuple, list)) or not v:
        return "takes a non-empty sequence of learning rates, e.g. (1e-3, 3e-3)"
    for x in v:
        if not is_number(x) or not math.isfinite(x) or x <= 0:
            return f"takes learning rates that are finite numbers > 0; {x!r} is not"
    return None


#: training setting -> rule (None: allowed); the fields of ``harness.tiers.TierConfig``
TRAIN_RULES: dict[str, Callable[[Any], str | None]] = {
    "d_model": _int_rule(1),
    "n_layers": _int_rule(1),
    "mlp_ratio": _int_rule(1),
    "short_conv": _int_rule(0),
    "steps": _int_rule(1),
    "batch_size": _int_rule(1),
    "lrs": _lrs_rule,
    "weight_decay": _float_rule(0.0, None),
    "warmup_frac": _float_rule(0.0, 1.0, high_open=True),
    "grad_clip": _float_rule(0.0, None, low_open=True),
    "n_seeds": _int_rule(1),
    "n_valid": _int_rule(1),
    "n_test": _int_rule(1),
    "eval_batch": _int_rule(1),
    "eval_every": _int_rule(1),
    "n_check": _int_rule(1),
    "solve_threshold": _float_rule(0.0, 1.0, low_open=True),
}


def check_train_settings(overrides: dict[str, Any], flag: str = "--train-set") -> dict[str, Any]:
    """Each training setting by name, type and range; the overrides, with ``lrs`` as a tuple."""
    from harness.tiers import TierConfig

    fields = [f.name for f in dataclasses.fields(TierConfig)]
    out = dict(overrides)
    for key, value in overrides.items():
        if key not in fields:
            raise UsageError(f"{flag} {key}=...: " + suggest(key, fields, "training setting"))
        rule = TRAIN_RULES.get(key)
        why = rule(value) if rule else None
        if why is not None:
            raise UsageError(f"{flag} {key}={_show(value)}: {key} {why}")
        if key == "lrs":
            out[key] = tuple(float(x) for x in ((value,) if is_number(value) else value))
    return out


# -- task settings ------------------------------------------------------------------------------------------
def check_task_settings(task: str, tier: str, overrides: dict[str, Any], flag: str = "--task-set") -> None:
    """Names, types by the field's default, then the task config's own checks, as usage errors."""
    cls = get_task(task).cls
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    for key in overrides:
        if key not in fields:
            raise UsageError(
                f"{flag} {key}=...: " + suggest(key, fields, "config field", f"of task {task!r}")
            )
    tier_values = dict(cls.TIERS.get(tier, {}).get("config", {}))
    for key, value in overrides.items():
        f = fields[key]
        default = tier_values.get(key, f.default if f.default is not dataclasses.MISSING else None)
        why = check_like(default, value)
        if why is not None:
            raise UsageError(f"{flag} {key}={_show(value)}: {task}'s {key} {why} (at {tier}: {default!r})")
    try:
        cls.make_config(tier, overrides)
    except RegistryError:
        raise
    except (ValueError, TypeError) as e:
        shown = " ".join(f"{k}={_show(v)}" for k, v in overrides.items())
        raise UsageError(f"{flag} {shown}: {e}") from None


# -- device ---------------------------------------------------------------------------------------------------
DEVICE_KINDS = ("cpu", "cuda")


def device_arg(auto: bool = False, index: bool = True) -> Callable[[str], str]:
    """argparse type of ``--device``, by its form only (no torch import): ``cpu``, ``cuda``,
    ``cuda:N`` (with ``index``), ``auto`` (with ``auto``). Whether this machine has the device is
    ``check_device``'s question, asked when the command runs."""
    forms = [*DEVICE_KINDS, *(["cuda:N"] if index else []), *(["auto"] if auto else [])]
    pattern = r"(cpu|cuda" + (r"(:\d+)?" if index else "") + (r"|auto" if auto else "") + ")"

    def parse(text: str) -> str:
        if re.fullmatch(pattern, text):
            return text
        close = difflib.get_close_matches(
            text.strip().lower(), [f.replace("N", "0") for f in forms], n=1, cutoff=0.4
        )
        hint = f"; did you mean {close[0]!r}?" if close and close[0] != text else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device this command takes; allowed: {', '.join(forms)}{hint}"
        )

    parse.__name__ = "device"
    return parse


def check_device(text: str, flag: str = "--device", local: bool = True) -> str:
    """A device this machine has: ``cpu``, ``cuda`` or ``cuda:N``; ``auto`` becomes ``cuda`` when
    CUDA is available, else ``cpu``. With ``local=False`` (runs on a Ray cluster, whose nodes have
    the GPUs) only the form is checked: ``cpu`` or ``cuda`` (Ray gives each run its GPU as ``cuda``)."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        close = difflib.get_close_matches(text.lower(), [*DEVICE_KINDS, "cuda:0"], n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"{flag} {text!r} is not a device; allowed: cpu, cuda, cuda:N{hint}") from None
    if dev.type not in DEVICE_KINDS:
        raise UsageError(
            f"{flag} {text!r}: the harness runs on {' or '.join(DEVICE_KINDS)}, not {dev.type!r}"
        )
    if not local:
        if dev.type == "cuda" and dev.index is not None:
            raise UsageError(
                f"{flag} {text}: with --executor ray give --device cuda; Ray gives each run its GPU(s), "
                "which the run sees as cuda"
            )
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"{flag} {text}: this machine has no usable CUDA device (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}); use --device cpu"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UsageError(
                f"{flag} {text}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}; closest: cuda:{n - 1}"
            )
    return text


# -- executors --------------------------------------------------------------------------------------------
def fraction_or_count(text: str) -> float:
    """argparse type of ``--gpus-per-run``: 0, a fraction in (0, 1] (runs share a GPU) or a whole number."""
    value = _parse_number(text)
    if value < 0 or (value > 1 and not float(value).is_integer()):
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed; allowed: 0, a fraction in (0, 1] (e.g. 0.25: four runs share a GPU) "
            "or a whole number of GPUs"
        )
    return value


def check_executor(
    executor: str,
    device: str,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
) -> dict[str, Any]:
    """``--executor`` and its flags, before anything runs; the options of ``harness.executors``.

    ``--address``, ``--cpus-per-run`` and ``--gpus-per-run`` belong to ``--executor ray`` (the local
    executor runs ``--jobs`` single-threaded runs, one per core, on the devices of this machine);
    ``--executor ray`` needs Ray installed; a CUDA run under Ray needs a GPU share (default 1 GPU)."""
    if executor == "local":
        for flag, value in (
            ("--address", address),
            ("--cpus-per-run", cpus_per_run),
            ("--gpus-per-run", gpus_per_run),
        ):
            if value is not None:
                raise UsageError(
                    f"{flag} {value}: only with --executor ray (the local executor runs --jobs runs at a time)"
                )
        return {}
    if executor != "ray":
        raise UsageError(f"--executor {executor!r}: allowed: local, ray")
    from harness.executors import import_ray

    import_ray()  # a UsageError saying how to install it
    cuda = device.startswith("cuda")
    gpus = gpus_per_run if gpus_per_run is not None else (1.0 if cuda else 0.0)
    if cuda and gpus == 0:
        raise UsageError(
            f"--gpus-per-run 0 with --device {device}: a CUDA run needs a GPU share (e.g. 0.25: four runs per GPU)"
        )
    if not cuda and gpus > 0:
        raise UsageError(
            f"--gpus-per-run {gpus:g} with --device {device}: the runs would hold GPUs and train on CPU; "
            "add --device cuda, or drop --gpus-per-run"
        )
    cpus = cpus_per_run if cpus_per_run is not None else 1.0
    if not math.isfinite(cpus) or cpus <= 0:
        raise UsageError(
            f"--cpus-per-run {cpus:g}: allowed: a number > 0 (default 1: runs are single-threaded)"
        )
    options: dict[str, Any] = {"cpus_per_run": cpus, "gpus_per_run": gpus}
    if address is not None:
        if not address.strip():
            raise UsageError("--address '' is empty; give a cluster address (host:port) or auto")
        from harness.executors import connect_ray

        connect_ray(address)  # a cluster that is not there is a usage error before anything runs
        options["address"] = address
    return options


# -- paths -------------------------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None when one can); the probe file is removed."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "it is not writable"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".harness-probe-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(tmp)
    return None


def check_results_dir(text: str, flag: str = "--results-dir", write: bool = True) -> Path:
    """A results directory: a directory (or creatable as one); with ``write``, one we can write in."""
    path = Path(text).expanduser()
    if not text.strip():
        raise UsageError(f"{flag} {text!r} is empty; give a directory, e.g. results")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {text}: it is a file, not a directory; give a directory, e.g. results")
    runs = path / "runs"
    if runs.exists() and not runs.is_dir():
        raise UsageError(f"{flag} {text}: {runs} is a file; a store keeps its records in the directory runs/")
    if not write:
        return path
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UsageError(f"{flag} {text}: {existing} is a file, not a directory, so {path} cannot be created")
    why = _probe_writable(existing)
    if why is not None:
        where = "" if existing == path else f" ({existing}, where it would be created)"
        raise UsageError(f"{flag} {text}: cannot write there{where}: {why}")
    for kind_dir in runs.iterdir() if runs.is_dir() else ():
        if kind_dir.is_dir() and _probe_writable(kind_dir) is not None:
            raise UsageError(
                f"{flag} {text}: cannot write records in {kind_dir}: {_probe_writable(kind_dir)}"
            )
    return path


def check_output_file(text: str | None, flag: str = "--output") -> Path | None:
    """A file to write: not a directory, in a folder that exists (or can be created) and is writable."""
    if text is None:
        return None
    if not text.strip():
        raise UsageError(f"{flag} {text!r} is empty; give a file name, e.g. board.md")
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise UsageError(
            f"{flag} {text}: it is a directory; give a file name, e.g. {Path(text) / 'board.md'}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {text}: the file exists and is not writable")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise UsageError(f"{flag} {text}: {existing} is a file, not a directory, so {path} cannot be created")
    why = _probe_writable(existing)
    if why is not None:
        raise UsageError(f"{flag} {text}: cannot write in {existing}: {why}")
    return path
