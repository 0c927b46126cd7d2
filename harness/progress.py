"""Progress output: one place for what long commands show while they work.

Progress goes to stderr, never stdout (stdout carries the tables and JSON a command prints): a tqdm
bar with an ETA (``bar``), and one-line notes printed above it without breaking it (``note``). A
disabled bar (``--quiet``, or nothing to do) prints nothing.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(total: int, desc: str, enabled: bool = True, unit: str = "it"):
    """A progress bar on stderr (a context manager; ``.update``, ``.total``, ``.set_postfix_str``)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )


def note(message: str) -> None:
    """One line on stderr, above any bar that is showing."""
    tqdm.write(message, file=sys.stderr)
