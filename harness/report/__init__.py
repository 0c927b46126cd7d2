"""``harness report``: a static, offline site of the stored records (DESIGN §11).

Per group: the leaderboard (intervals, ties, reference rows, chosen rates), quality vs speed with
the Pareto frontier, accuracy against test length, recall against measured state size (from
``--sweep d_state=...``), time against T on log-log axes, a numerics heatmap, and provenance; every
figure also as SVG and PNG. ``harness.report.site.build_report`` builds it; this module stays light
(the CLI imports it to say where a report would go).
"""

from __future__ import annotations

from pathlib import Path


def default_output(results_dir: str | Path = "results") -> Path:
    """Where ``harness report`` writes by default: ``<results dir>/report``."""
    return Path(results_dir) / "report"
