"""The errors a command raises for the one error policy of ``harness.cli.main``, and its exit codes.

Standard library only: every command family (bench, gate, history, report, ...) raises these
without importing torch, and the CLI maps them before it has imported anything heavy.

Exit codes, the same for every subcommand (the README and ``harness --help`` say the same):

- 0: ok.
- 1: the command ran and something failed: a run failed or diverged, a candidate does not
  conform, a record is corrupt, a board is incomplete, a benchmark row errored, a regression
  (``gate``, ``history compare``), a file could not be written (``CommandFailed``, ``OSError``).
- 2: a usage error: a bad flag, value or name, or a missing input the user must supply
  (``UsageError``, ``ValueError``, ``RegistryError``; argparse's own errors too). For ``gate``,
  ``history`` and ``machine``, whose exit 1 means a regression or a failed benchmark, any failure
  to run at all is 2 as well (their parsers set ``failure_exit=2``), so that 1 is never a false
  alarm.
- 130: interrupted (Ctrl-C).

Every error is one line on stderr, ``harness: error: ...``; an unexpected exception (a bug) is one
line naming its type, and ``HARNESS_TRACEBACK=1`` shows its traceback.
"""

from __future__ import annotations

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

#: the exit codes, as ``harness --help`` and the README list them
EXIT_CODES = f"""\
exit codes (the same for every command):
  {OK}    ok
  {FAILED}    something failed: a run, a conformance check, a record (corrupt), a board
       (incomplete), a benchmark, a file that could not be written; a regression (gate,
       history compare)
  {USAGE}    usage error: a bad flag, value or name, or a missing input; for gate, history
       and machine also any other failure to run, so that their 1 always means a
       regression or a failed benchmark
  {INTERRUPTED}  interrupted (Ctrl-C)
errors are one line on stderr; HARNESS_TRACEBACK=1 shows the traceback of an internal error"""


class UsageError(ValueError):
    """A bad input (a flag, a value, a name, a missing file the user must supply): printed as one
    line, exit code 2, before anything runs."""


class CommandFailed(Exception):
    """Something failed that is not the user's input (a record, a file, a worker, a tool the command
    drives): printed as one line, exit code 1 (2 for commands whose exit 1 is a verdict)."""
