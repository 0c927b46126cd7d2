"""Algorithms that only ``harness bench scans`` times: one recurrence, many ways to compute it.

Dense linear scans by sequential, Hillis-Steele, Blelloch, chunkwise and cyclic reduction
(``scan_algorithms``), the DPLR resolvent by a dense solve, Woodbury and a truncated Neumann series
(``resolvent``), the delta rule by the token loop, naive WY and block-SSD (``wy_vs_ssd``). No
candidate calls them: what candidates call lives in ``harness.kernels`` (the ``kernels/`` folder).
Like the kernels, each has its plain reference beside the fast forms, in the ``[B, T, H, D]``
layout, returning ``(output, final_state)``.
"""
