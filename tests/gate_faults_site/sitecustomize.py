"""Injects the gate tests' faults into a worker subprocess (see tests/gate_faults.py)."""

import os
import sys

if os.environ.get("GATE_TEST_FAULTS"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gate_faults

    gate_faults.install_from_env()
