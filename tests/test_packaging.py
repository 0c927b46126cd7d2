"""Packaging: the four source folders install under the one import package ``harness``."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL_IMPORT = re.compile(r"^\s*(from|import)\s+(tasks|candidates|kernels)(\.|\s|$)", re.M)


def test_no_module_imports_the_folders_as_top_level_packages():
    """``from tasks.x import`` works from the repo root but not from a wheel: it must not appear."""
    offenders = []
    for folder in ("harness", "candidates", "tasks", "kernels", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if TOP_LEVEL_IMPORT.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"import these as harness.<folder>: {offenders}"


def test_wheel_contains_every_source_folder_under_harness(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mixer_harness-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, pkg in (
        ("candidates", "harness/candidates"),
        ("tasks", "harness/tasks"),
        ("kernels", "harness/kernels"),
    ):
        for src in (ROOT / folder).glob("*.py"):
            assert f"{pkg}/{src.name}" in names, f"{folder}/{src.name} missing from the wheel"
    for init in (ROOT / "harness").rglob("__init__.py"):
        sub = init.parent.relative_to(ROOT).as_posix()
        assert f"{sub}/__init__.py" in names, f"package {sub} missing from the wheel (pyproject packages)"
    assert "harness/cli.py" in names
    assert "harness/schemas/leaderboard.schema.json" in names  # the JSON leaderboard's schema
    assert "harness/report/figures.py" in names
    assert any(n.startswith("harness/report_assets/") and n.endswith(".js") for n in names), "report assets"
    assert not any(n.startswith(("tasks/", "candidates/", "kernels/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "harness = harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
