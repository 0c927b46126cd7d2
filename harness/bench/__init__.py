"""Microbenchmarks: throughput, numerics and the ``scans`` algorithm family (``harness bench``)."""
