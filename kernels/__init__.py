"""Functional ops (scans, recurrences) shared by candidates.

Layout ``[B, T, H, D]``; every op returns ``(output, final_state)`` and takes ``impl=``:
``"recurrent"`` (a plain loop over time: the reference), ``"chunk"`` / ``"scan"`` (vectorised torch),
``"triton"`` (where written). Tests compare every fast implementation with its reference.
This package imports nothing else of the harness.
"""
