"""fla as a backend: the adapters match their harness twins, and every harness kernel agrees with
fla's op for the same map. Runs where the fla extra is installed (``pip install '.[fla]'``; .ci/run
installs it); on CPU fla's pure-torch references, which compute in float32, so agreement is to
float32 rounding (~1e-7 relative), checked at 1e-5."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fla", reason="the fla extra is not installed (pip install '.[fla]')")

from harness.bench.against_fla import PAIRS, AgainstConfig, run_against_fla  # noqa: E402
from harness.registry import candidate_names, get_candidate, group_members  # noqa: E402

#: adapter -> (harness twin, the twin's hyperparameter overrides)
TWINS = {
    "fla:gla": ("diagonal", {}),
    "fla:simple-gla": ("simple-gla", {}),
    "fla:deltanet": ("deltanet", {}),
    "fla:gated-deltanet": ("gated-deltanet", {}),
    "fla:deltaproduct-2": ("deltaproduct-2", {}),
    "fla:gated-deltaproduct-2": ("deltaproduct-2", {"gated": True}),
}


def test_every_adapter_is_registered_in_its_group():
    assert set(TWINS) <= set(candidate_names())
    assert set(TWINS) <= set(group_members("fla"))


@pytest.mark.parametrize("adapter", sorted(TWINS))
def test_adapter_has_its_twins_projections_and_map(adapter):
    twin, overrides = TWINS[adapter]
    torch.manual_seed(0)
    ours = get_candidate(twin).build(64, **overrides).double()
    torch.manual_seed(0)
    fla = get_candidate(adapter).build(64).double()
    a, b = ours.state_dict(), fla.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "different parameters"
    x = torch.randn(2, 80, 64, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        y_ours, y_fla = ours(x), fla(x)
    assert float((y_fla - y_ours).norm() / y_ours.norm()) < 1e-5


def test_fla_version_is_part_of_the_identity():
    spec = get_candidate("fla:deltanet")
    assert spec.hparam_defaults["fla_version"] != "not installed"
    with pytest.raises(ValueError, match="is installed"):
        spec.build(32, fla_version="0.0.0-other")


def test_every_kernel_agrees_with_fla():
    rows = run_against_fla(AgainstConfig(seq_lens=(40, 130)))
    assert {r["pair"] for r in rows} == set(PAIRS)
    bad = [r for r in rows if r["status"] != "ok"]
    assert not bad, bad
    assert max(max(r["out_rms"], r["state_rms"]) for r in rows) < 1e-5


def test_against_fla_through_the_cli(capsys):
    from harness.cli import main

    rc = main(["bench", "numerics", "--against", "fla", "--seq-lens", "33", "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert '"pair": "deltanet"' in out
