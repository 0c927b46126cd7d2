"""``harness gate``: did this change make a candidate slower or worse? Exit 0 pass, 1 regression, 2 error.

Two forms:

- against a committed baseline (default): fresh measurements compared with
  ``results/baselines/<machine class>.json`` (``--update-baseline`` writes it, deliberately);
- A/B (``--base REF``): the base commit checked out in a temporary git worktree and measured with
  its own code in a subprocess, interleaved round by round with the current tree (also measured in
  a subprocess), on the same machine at the same time. No baseline file is needed, so this is the
  form for CI runners of unknown hardware.

Quality: deterministic short training runs (single-threaded CPU, fixed seeds) of a small fixed set
of candidates on one task (``settings``). Speed: per candidate, samples of (forward+backward time) /
(reference op time), the reference timed just before the candidate in the same process
(``worker``). The verdicts — quality by an accuracy drop beyond a tolerance, speed by a ratio of
medians beyond a factor confirmed by a Mann-Whitney U test — are ``verdicts.judge``'s, the same
judge ``harness history compare`` uses.

The gated set is the baseline's (``--candidates`` / ``--tasks`` to choose another when updating it);
a candidate measured but absent from the baseline is reported as new, one in the baseline but no
longer registered is reported as missing; neither fails the gate.

One concern per module: ``settings`` (what is measured), ``worker`` (measuring), ``ab`` (the A/B
form's worktree and workers), ``baseline`` (baseline files), ``verdicts`` (the judge), ``render``
(the report), ``cli`` (the command).
"""

from __future__ import annotations

from harness.errors import CommandFailed

PASS, REGRESSION, ERROR = 0, 1, 2


class GateError(CommandFailed):
    """The gate could not run (no baseline, bad arguments, a worker died): exit code 2, since the
    gate's parser sets ``failure_exit=2`` (its exit 1 is a regression)."""
