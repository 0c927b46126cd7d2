"""A stand-in for a broken third-party package: importing it fails (a missing dependency).

tests/test_bad_input.py installs it through an entry point next to a working plug-in; the harness
must name this entry point once and keep everything else usable.
"""

from __future__ import annotations

import this_dependency_is_not_installed  # noqa: F401
