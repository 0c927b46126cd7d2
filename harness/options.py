"""The options the command families share, defined once: the same flag, choices and help for the
same thing in every subcommand (``--device``, ``--quiet``, ``--results-dir``, ``--output``,
``--format``, comma-separated lists).

Light on purpose (the standard library and ``harness.validate``'s argparse types): building the
parser, for ``harness --help`` or any command, imports nothing heavy.

Conventions:

- a list of names or values is one comma-separated flag (``--candidates a,b``, ``--tasks``,
  ``--dtypes``, ``--seq-lens``); repeating the flag adds to the list (``CommaList``);
- ``--device`` takes ``cpu``, ``cuda`` and, where the command can use an index, ``cuda:N``; commands
  that measure the machine take ``auto`` too (cuda when available, else cpu). The form is checked
  while parsing (``validate.device_arg``), availability when the command runs
  (``validate.check_device``);
- ``--quiet`` turns progress output off (``--no-progress`` is a hidden alias kept for scripts).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from harness import validate
from harness.tiers import TIERS

#: candidates a board always includes (``--baselines``)
DEFAULT_BASELINES = "softmax,diagonal"
#: output formats of a leaderboard (``harness.leaderboard.render``)
BOARD_FORMATS = ("table", "markdown", "csv", "json", "html")
#: output formats of a benchmark table (``harness.bench.report.render``)
BENCH_FORMATS = ("table", "markdown", "csv", "json")

_GIVEN = "_comma_lists_given"  # namespace attribute: the list flags given so far in this parse


class CommaList(argparse.Action):
    """A comma-separated list flag that may be repeated, each use adding to the list:
    ``--tasks a,b --tasks c`` is ``--tasks a,b,c``. The value keeps the type's form: text is joined
    with commas (commands split it with ``validate.name_list``), a list (``validate.int_list``, ...)
    is extended; the default is replaced by the first use, not added to."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string=None
    ) -> None:
        given = getattr(namespace, _GIVEN, None)
        if given is None:
            given = set()
            setattr(namespace, _GIVEN, given)
        current = getattr(namespace, self.dest, None)
        if self.dest not in given or current is None:
            value = list(values) if isinstance(values, list) else values
        elif isinstance(current, list):
            value = [*current, *(v for v in values if v not in current)]
        else:
            value = f"{current},{values}"
        given.add(self.dest)
        setattr(namespace, self.dest, value)


def add_list(
    p: argparse.ArgumentParser,
    *flags: str,
    help: str,
    type: Callable[[str], Any] | None = None,
    **kw: Any,
) -> argparse.Action:
    """A ``CommaList`` flag; the help says it is comma-separated and repeatable."""
    kw.setdefault("metavar", "A,B")
    return p.add_argument(
        *flags, action=CommaList, type=type, help=f"comma-separated {help}; repeatable", **kw
    )


def add_device(
    p: argparse.ArgumentParser,
    default: str = "cpu",
    auto: bool = False,
    index: bool = True,
    what: str = "the device",
) -> argparse.Action:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` (``index``), ``auto`` (``auto``)."""
    forms = ["cpu", "cuda", *(["cuda:N"] if index else [])]
    if auto:
        allowed = ", ".join(forms) + " or auto (cuda when available, else cpu)"
    else:
        allowed = ", ".join(forms[:-1]) + f" or {forms[-1]}"
    return p.add_argument(
        "--device",
        default=default,
        type=validate.device_arg(auto=auto, index=index),
        metavar="DEVICE",
        help=f"{what}: {allowed}; default {default}",
    )


def add_tier(p: argparse.ArgumentParser, what: str = "the tier") -> None:
    p.add_argument(
        "--tier",
        default="quick",
        choices=sorted(TIERS),
        help=f"{what}: smoke (plumbing), quick (the CPU default) or full (the published protocols); "
        "default quick",
    )


def add_quiet(p: argparse.ArgumentParser, what: str = "progress") -> None:
    """``--quiet`` (and its hidden alias ``--no-progress``): no progress output on stderr."""
    p.add_argument("--quiet", action="store_true", help=f"no {what} output on stderr (results still print)")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_results_dir(p: argparse.ArgumentParser, what: str = "where records live") -> None:
    p.add_argument("--results-dir", default="results", metavar="DIR", help=f"{what} (default ./results)")


def add_format(p: argparse.ArgumentParser, choices: Sequence[str], default: str = "table") -> None:
    p.add_argument(
        "--format",
        default=default,
        choices=list(choices),
        help=f"output format: {', '.join(choices)} (default {default})",
    )


def add_output(
    p: argparse.ArgumentParser, what: str = "write the output to this file instead of stdout"
) -> None:
    p.add_argument("--output", metavar="FILE", help=what)
