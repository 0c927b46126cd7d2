"""Labelled variants (``diagonal[d_state=8]``) and ``--sweep key=v1,v2``: names that resolve through the
registry, records that carry the label, identities that differ per value, candidates without the
hyperparameter said so and left unswept."""

from __future__ import annotations

import pytest

from harness import registry
from harness.cli import main
from harness.results import RecordStore
from harness.sweep import plan, run_sweep
from harness.train import RunSpec, resolve
from harness.variants import (
    VariantError,
    base_name,
    canonical_name,
    expand_sweep,
    parse_sweep,
    parse_variant,
    variant_name,
)


def test_parse_and_format_round_trip():
    assert parse_variant("diagonal[d_state=8]") == ("diagonal", {"d_state": 8})
    assert parse_variant("diagonal") == ("diagonal", {})
    base, over = parse_variant(" x[ b = (1, 2) , a=0.5, c=true, d=trsm ]")
    assert base == "x" and over == {"b": (1, 2), "a": 0.5, "c": True, "d": "trsm"}
    name = variant_name(base, over)
    assert name == "x[a=0.5,b=(1,2),c=true,d=trsm]"
    assert parse_variant(name) == (base, over)
    assert canonical_name("diagonal[ d_state = 8 ]") == "diagonal[d_state=8]"
    assert base_name("deltanet[d_state=4]") == "deltanet" and base_name("softmax") == "softmax"
    for bad in ("x[d_state]", "[a=1]", "x[]", "x[a=1,a=2]"):
        with pytest.raises(VariantError):
            parse_variant(bad)


def test_variant_resolves_through_the_registry():
    spec = registry.get_candidate("diagonal[d_state=8]")
    assert spec.name == "diagonal[d_state=8]" and spec.cls is registry.get_candidate("diagonal").cls
    assert spec.validate_hparams({})["d_state"] == 8
    assert registry.get_candidate("deltanet-neg[d_state=4]").validate_hparams({})["allow_negative"] is True
    assert registry.get_candidate("diagonal[d_state=4]+gate").validate_hparams({})["d_state"] == 4
    with pytest.raises(registry.RegistryError, match="'d_state'.*softmax"):
        registry.get_candidate("softmax[d_state=4]")


def test_variants_get_their_own_identity_and_carry_the_label():
    a = resolve(RunSpec("diagonal[d_state=4]", "mqar", tier="smoke"))
    b = resolve(RunSpec("diagonal[d_state=8]", "mqar", tier="smoke"))
    plain = resolve(RunSpec("diagonal", "mqar", tier="smoke"))
    assert len({a.run_id, b.run_id, plain.run_id}) == 3
    assert a.identity["hparams"]["d_state"] == 4 and a.identity["candidate"] == "diagonal[d_state=4]"
    # plan spells the label canonically
    cells = plan(["diagonal[ d_state=4 ]"], ["mqar"], "smoke")
    assert cells[0].base.candidate == "diagonal[d_state=4]"


def test_expand_sweep_says_which_candidates_lack_the_key():
    hp = lambda n: registry.get_candidate(n).hparam_defaults
    names, notes = expand_sweep(["softmax", "diagonal", "deltanet"], [parse_sweep("d_state=4,8")], hp)
    assert names == [
        "softmax",
        "diagonal[d_state=4]",
        "diagonal[d_state=8]",
        "deltanet[d_state=4]",
        "deltanet[d_state=8]",
    ]
    assert len(notes) == 1 and "softmax has no hyperparameter 'd_state'" in notes[0]
    assert "runs at its defaults" in notes[0]
    # a product over two keys
    names, _ = expand_sweep(["diagonal"], [parse_sweep("d_state=4,8"), parse_sweep("n_heads=1,2")], hp)
    assert len(names) == 4 and "diagonal[d_state=8,n_heads=2]" in names
    with pytest.raises(VariantError, match="did you mean 'd_state'"):
        expand_sweep(["diagonal"], [parse_sweep("d_stat=4")], hp)
    for bad in ("d_state", "d_state=", "d_state=4,4"):
        with pytest.raises(VariantError):
            parse_sweep(bad)


def test_compare_sweep_runs_each_value_as_a_labelled_variant(tmp_path, capsys, installed_plugin):
    argv = [
        "--candidates",
        "toy-ema",
        "--baselines",
        "",
        "--tasks",
        "toy-last",
        "--tier",
        "smoke",
        "--results-dir",
        str(tmp_path),
        "--sweep",
        "decay=0.5,0.9",
    ]
    assert main(["compare", *argv, "--quiet", "--jobs", "1", "--format", "json"]) == 0
    capsys.readouterr()
    records, _ = RecordStore(tmp_path).records("train")
    assert sorted(r["candidate"] for r in records) == ["toy-ema[decay=0.5]", "toy-ema[decay=0.9]"]
    assert {r["identity"]["hparams"]["decay"] for r in records} == {0.5, 0.9}
    # the leaderboard of the same selection, from stored records
    assert main(["leaderboard", *argv, "--format", "json"]) == 0
    assert '"toy-ema[decay=0.9]"' in capsys.readouterr().out
    # a sweep over a key nobody has is a usage error naming it
    assert main(["compare", *argv[:-1], "nope=1", "--quiet"]) == 2
    assert "no selected candidate has that hyperparameter" in capsys.readouterr().err


def test_name_lists_keep_commas_inside_a_label():
    from harness.cli import split_names

    assert split_names("softmax, diagonal[d_state=8,n_heads=2],deltanet") == [
        "softmax",
        "diagonal[d_state=8,n_heads=2]",
        "deltanet",
    ]


def test_run_accepts_a_variant_label(tmp_path, installed_plugin):
    cells = plan(["toy-ema[decay=0.5]"], ["toy-last"], "smoke")
    res = run_sweep(cells, RecordStore(tmp_path), progress=False)
    assert [r["candidate"] for r in res.records] == ["toy-ema[decay=0.5]"]
    assert res.records[0]["status"] == "ok"
