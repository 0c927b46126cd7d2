"""Plug-in discovery: a package outside the repo adds a candidate and a task via entry points."""

from __future__ import annotations

import pytest

from harness import registry


def test_entry_point_plugin_registers_candidate_and_task(installed_plugin):
    assert "toy-ema" in registry.candidate_names()
    assert "toy-last" in registry.task_names()
    assert registry.group_members("toy") == ["toy-ema"]
    m = registry.get_candidate("toy-ema").build(16, decay=0.25)
    assert m.decay == 0.25


def test_plugin_candidate_passes_parallel_equals_recurrent(installed_plugin):
    import torch

    m = registry.get_candidate("toy-ema").build(8).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    assert torch.allclose(m(x), m.forward_recurrent(x), atol=1e-12)


def test_plugin_trains_end_to_end(installed_plugin, tmp_path):
    from harness.cli import main

    rc = main(
        [
            "run",
            "--candidate",
            "toy-ema",
            "--task",
            "toy-last",
            "--tier",
            "smoke",
            "--results-dir",
            str(tmp_path / "res"),
            "--quiet",
        ]
    )
    assert rc == 0
    assert list((tmp_path / "res" / "runs" / "train").glob("*.json"))


def test_without_plugin_the_names_are_unknown():
    with pytest.raises(registry.RegistryError, match="unknown candidate 'toy-ema'"):
        registry.get_candidate("toy-ema")
