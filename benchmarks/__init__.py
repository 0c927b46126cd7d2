"""asv benchmark suite of mixer-harness, generated from the candidate registry at import time.

asv measures this suite (always the current tree's) against many commits of the project; for a
commit other than the checked-out one, ``harness history backfill`` puts that commit's packages
first on PYTHONPATH. The suite therefore uses only the long-standing public API of ``harness``
(the registry, and ``harness.train`` for the quality runs) and no newer helper modules.

Every benchmark pins ``version`` to a constant, so editing a benchmark's code does not start a new
history (asv otherwise keys results by a hash of the source); bump the constant when a change makes
old numbers incomparable. asv assumes lower is better: times, peak memory and error rates all are.
"""
