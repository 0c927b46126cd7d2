"""Conformance: every registered candidate (and every group member, modifiers included) is checked
here automatically — registering a candidate is what puts it under test. The checks themselves are
``harness.conformance`` (one definition, also behind ``harness check`` and the gate before training)."""

from __future__ import annotations

import pytest
import torch

from harness import get_candidate
from harness.conformance import CHECK_NAMES, run_check
from harness.registry import candidate_names, groups


def all_names() -> list[str]:
    names = set(candidate_names())
    for members in groups().values():
        names.update(members)
    return sorted(names)


@pytest.mark.parametrize("check", CHECK_NAMES)
@pytest.mark.parametrize("name", all_names())
def test_conforms(name, check):
    if get_candidate(name).needs_cuda and not torch.cuda.is_available():
        pytest.skip(f"{name} needs CUDA")
    result = run_check(name, check)
    assert result.status != "fail", f"{name}: {check}: {result.detail}"
