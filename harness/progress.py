"""Progress output, one place for every long command: on stderr (stdout carries the tables and JSON
a command prints), a live bar on a terminal, a summary line every N steps otherwise.

A bar redrawn in place is right for a person at a terminal and wrong for a log file, where each
redraw becomes a line. ``progress_bar`` gives a tqdm bar when the stream is a TTY and a
``LineProgress`` (the same small interface: ``update``, ``set_postfix_str``, ``refresh``,
``write``, ``close``, ``total``, ``n``) that prints one summary line every ``every`` steps and at
the end otherwise. Callers close it in a ``finally`` so that nothing is drawn after an interruption
message.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm

#: summary lines per run of a non-TTY progress (about; one line every total/LINES steps)
LINES = 10


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LineProgress:
    """Progress as plain lines: ``desc: n/total (postfix), elapsed, about T left``."""

    def __init__(self, total: int, desc: str, file: IO[str], every: int | None = None, enabled: bool = True):
        self.total, self.n, self.desc, self.file, self.enabled = total, 0, desc, file, enabled
        self.every = every or max(1, -(-max(total, 1) // LINES))
        self.postfix = ""
        self.start = time.monotonic()
        self._last_line_at = 0
        self.closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._last_line_at >= self.every:
            self._line()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self) -> None:
        pass

    def write(self, text: str, file: IO[str] | None = None) -> None:
        """A message of its own (a failed run, ...): printed whether or not progress is shown."""
        print(text, file=file or self.file, flush=True)

    def _line(self) -> None:
        self._last_line_at = self.n
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        line = f"{self.desc}: {self.n}/{self.total} done, {_duration(elapsed)} elapsed"
        if 0 < self.n < self.total:
            line += f", about {_duration(elapsed / self.n * (self.total - self.n))} left"
        if self.postfix:
            line += f" (last: {self.postfix.removeprefix('last: ')})"
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        if self.n and self.n != self._last_line_at:
            self._line()
        self.closed = True


def progress_bar(
    total: int,
    desc: str,
    enabled: bool = True,
    file: IO[str] | None = None,
    every: int | None = None,
    **tqdm_options: Any,
) -> Any:
    """A tqdm bar on a terminal (``tqdm_options`` passed on), a ``LineProgress`` otherwise; neither
    draws when not ``enabled``."""
    file = file or sys.stderr
    isatty = getattr(file, "isatty", lambda: False)
    try:
        tty = bool(isatty())
    except (ValueError, OSError):  # a closed stream
        tty = False
    if tty:
        options = {"dynamic_ncols": True, **tqdm_options}
        return tqdm(total=total, desc=desc, disable=not enabled, file=file, **options)
    return LineProgress(total, desc, file, every, enabled)


def bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> Any:
    """The progress of a long command on stderr (stdout carries the tables and JSON it prints): a
    bar on a terminal, summary lines in a log; a context manager (``update``, ``total``,
    ``set_postfix_str``). A disabled one (``--quiet``, nothing to do) prints nothing."""
    return progress_bar(total, desc, enabled=enabled, unit=unit, leave=False)


def note(message: str) -> None:
    """One line on stderr, above any bar that is showing."""
    tqdm.write(message, file=sys.stderr)
