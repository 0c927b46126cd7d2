"""Registry behaviour: suggestions, presets, modifiers, names with '+', source hashes."""

from __future__ import annotations

import pytest

from harness import Mixer, register_candidate, registry
from harness.identity import class_sources, closure, source_files


def test_variants_are_names_with_presets():
    assert (
        registry.get_candidate("deltanet-neg").hparam_defaults
        != registry.get_candidate("deltanet").hparam_defaults
    )


def test_preset_must_be_a_constructor_parameter():
    with pytest.raises(registry.RegistryError, match="unknown hyperparameter 'nope' of Bad"):

        @register_candidate("test-bad-preset", nope=1)
        class Bad(Mixer):
            def __init__(self, d_model: int, n: int = 1) -> None:
                super().__init__(d_model)


def test_modifier_resolves_for_any_candidate_and_keeps_hparams():
    spec = registry.get_candidate("diagonal+gate")
    assert spec.modifier == "gate" and spec.base == "diagonal"
    assert set(registry.get_candidate("diagonal").hparam_defaults) <= set(spec.hparam_defaults)
    with pytest.raises(registry.RegistryError, match="unknown modifier"):
        registry.get_candidate("diagonal+gat")


def test_plus_in_a_registered_name_and_its_gated_form():
    assert registry.get_candidate("favor+").name == "favor+"
    assert registry.get_candidate("favor++gate").base == "favor+"


def test_modifier_hash_covers_the_wrapped_candidate():
    gated = {n: registry.get_candidate(f"{n}+gate").source_hash() for n in ("diagonal", "linear-attention")}
    assert gated["diagonal"] != gated["linear-attention"]
    assert registry.get_candidate("diagonal").source_hash() != gated["diagonal"]


def test_every_group_member_resolves():
    for group, members in registry.groups().items():
        for name in members:
            assert registry.get_candidate(name).name == name, group


def test_source_files_follow_imports_not_the_whole_kernels_folder():
    names = {f.name for f in class_sources(registry.get_candidate("diagonal").cls)}
    assert {"diagonal.py", "_transition.py", "diag_scan.py", "mixer.py"} <= names
    assert "delta_rule.py" not in names and "softmax.py" not in names
    gated = registry.get_candidate("diagonal+gate")
    with_gate = {f.name for f in source_files(closure([a.__module__ for a in gated.applies]))}
    assert {"readout_gate.py", "fused_gate.py"} <= with_gate and "readout_gate.py" not in names
