"""Run identity: the hash covers every project source a run depends on, and nothing unrelated."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import identity
from harness.train import RunSpec, resolve


def _edited(monkeypatch, filename: str) -> None:
    """Pretend ``filename`` (a module of the project) gained a line: its bytes differ from disk."""
    real = identity.read_source

    def read(path: Path) -> bytes:
        data = real(path)
        return data + b"\n# edited\n" if path.name == filename else data

    monkeypatch.setattr(identity, "read_source", read)
    identity._hash_stamped.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    identity._hash_stamped.cache_clear()
    yield
    identity._hash_stamped.cache_clear()


@pytest.mark.parametrize(
    ("filename", "candidate", "task", "changes"),
    [
        ("_common.py", "diagonal", "parity", True),  # a helper every generator calls
        ("parity.py", "diagonal", "parity", True),
        ("mqar.py", "diagonal", "parity", False),  # another task
        ("diag_scan.py", "diagonal", "parity", True),  # a kernel the candidate imports
        ("_transition.py", "diagonal", "parity", True),  # the candidate's shared shell
        ("delta_rule.py", "diagonal", "parity", False),  # a kernel it never calls
        ("delta_rule.py", "deltanet", "parity", True),
        ("training.py", "diagonal", "parity", True),  # the engine
        ("backbone.py", "softmax", "mqar", True),
        ("splits.py", "softmax", "mqar", True),
        ("mixer.py", "softmax", "mqar", True),
        ("task.py", "softmax", "mqar", True),
        ("tiers.py", "softmax", "mqar", True),
    ],
)
def test_editing_a_source_changes_exactly_the_ids_that_depend_on_it(
    monkeypatch, filename, candidate, task, changes
):
    spec = RunSpec(candidate=candidate, task=task, tier="smoke")
    before = resolve(spec).run_id
    _edited(monkeypatch, filename)
    after = resolve(spec).run_id
    assert (before != after) == changes


def test_engine_closure_follows_imports():
    names = {p.name for p in identity.engine_sources()}
    assert {"training.py", "backbone.py", "mixer.py", "task.py", "tiers.py", "splits.py"} <= names
    # bookkeeping that fixes no number: the registry (its output is in the identity) and the CLI
    assert not names & {"registry.py", "cli.py", "leaderboard.py", "results.py"}


def test_identity_of_a_plug_in_covers_its_own_package(installed_plugin):
    from harness.registry import get_candidate

    files = identity.class_sources(get_candidate("toy-ema").cls)
    assert {p.name for p in files} >= {"toy_mixer_plugin.py", "mixer.py"}
