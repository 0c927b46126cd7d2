"""Verdicts on synthetic records: rate chosen on valid (never test), seed intervals, ranks with ties,
failures last, incomplete candidates unranked, reference rows and flagged columns, formats."""

from __future__ import annotations

import json
import math

import pytest

from harness import leaderboard as lb
from harness import scoring


def rec(cand, task, seed, lr, valid, test, status="ok", lengths=None, steps_to_solve=None, config=None):
    r = {
        "kind": "train",
        "candidate": cand,
        "task": task,
        "tier": "quick",
        "seed": seed,
        "lr": lr,
        "status": status,
        "state": {"state_bytes": 1024, "seq_len": 64},
        "params_mixer": 100,
        "steps_done": steps_to_solve or 1000,
        "steps_to_solve": steps_to_solve,
        "identity": {"task_config": config or {}},
    }
    if status == "ok":
        r["valid"] = {"token_acc": valid, "seq_acc": valid}
        r["valid_score"] = valid
        r["test"] = {"token_acc": test, "seq_acc": test}
        r["test_lengths"] = lengths or {}
    return r


def test_rate_is_chosen_on_valid_never_on_test():
    records = [rec("a", "t", 0, 1e-3, valid=0.9, test=0.5), rec("a", "t", 0, 1e-2, valid=0.5, test=0.99)]
    cell = scoring.cell_verdict(records)
    assert cell.lr == 1e-3 and cell.mean == 0.5


def test_first_seed_scheme_chooses_on_the_seed_run_at_every_rate():
    # seed 0 at both rates; seeds 1, 2 only at the rate seed 0 chose
    records = [
        rec("a", "t", 0, 1e-3, valid=0.6, test=0.6),
        rec("a", "t", 0, 3e-3, valid=0.8, test=0.8),
        rec("a", "t", 1, 3e-3, valid=0.7, test=0.7),
        rec("a", "t", 2, 3e-3, valid=0.9, test=0.9),
    ]
    lr, selection = scoring.choose_rate(records)
    assert (lr, selection) == (3e-3, [0])
    cell = scoring.cell_verdict(records)
    assert cell.seeds == [0, 1, 2] and cell.mean == pytest.approx(0.8)


def test_grid_scheme_chooses_by_the_mean_over_seeds():
    records = [rec("a", "t", s, 1e-3, v, v) for s, v in enumerate([0.9, 0.5, 0.5])]
    records += [rec("a", "t", s, 3e-3, v, v) for s, v in enumerate([0.8, 0.8, 0.8])]
    lr, selection = scoring.choose_rate(records)
    assert lr == 3e-3 and selection == [0, 1, 2]


def test_ties_on_valid_go_to_the_rate_that_solved_in_fewer_steps():
    records = [
        rec("a", "t", 0, 1e-3, 1.0, 1.0, steps_to_solve=900),
        rec("a", "t", 0, 3e-3, 1.0, 1.0, steps_to_solve=300),
    ]
    assert scoring.choose_rate(records)[0] == 3e-3


def test_interval_over_seeds_and_none_for_one_seed():
    records = [rec("a", "t", s, 1e-3, 0.8, x) for s, x in enumerate([0.7, 0.8, 0.9])]
    cell = scoring.cell_verdict(records)
    assert cell.mean == pytest.approx(0.8)
    assert cell.ci == pytest.approx(0.1 / math.sqrt(3) * 4.302652729911275, rel=1e-6)
    assert math.isnan(scoring.cell_verdict(records[:1]).ci)


def test_overlapping_intervals_tie_and_clear_gaps_rank():
    def cell(name, scores):
        return scoring.cell_verdict([rec(name, "t", s, 1e-3, v, v) for s, v in enumerate(scores)])

    cells = {
        "a": cell("a", [0.95, 0.96, 0.97]),
        "b": cell("b", [0.90, 0.97, 0.99]),  # wide: overlaps a
        "c": cell("c", [0.50, 0.51, 0.52]),  # clearly below both
    }
    assert scoring.task_ranks(cells) == {"a": 1, "b": 1, "c": 3}


def test_failed_and_diverged_cells_rank_last_not_skipped():
    records = [
        rec("good", "t1", 0, 1e-3, 0.2, 0.2),
        rec("crash", "t1", 0, 1e-3, 0, 0, status="failed"),
        rec("nan", "t1", 0, 1e-3, 0, 0, status="diverged"),
        rec("good", "t2", 0, 1e-3, 0.2, 0.2),
        rec("crash", "t2", 0, 1e-3, 0.9, 0.9),
        rec("nan", "t2", 0, 1e-3, 0.9, 0.9),
    ]
    board = lb.build_board(records, ["good", "crash", "nan"], ["t1", "t2"])
    assert board.ranks["t1"] == {"good": 1, "crash": 2, "nan": 2}
    # skipping the crashed cell would give 'crash' rank 1.0 (its t2 rank alone); it ranks last on t1
    assert board.overall["crash"] == pytest.approx(1.5) and board.overall["good"] == pytest.approx(2.0)
    text = lb.render(board, "table")
    assert "FAILED" in text and "DIVERGED" in text


def test_candidate_missing_cells_gets_no_rank():
    records = [
        rec("a", "t1", 0, 1e-3, 0.9, 0.9),
        rec("a", "t2", 0, 1e-3, 0.9, 0.9),
        rec("b", "t1", 0, 1e-3, 1, 1),
    ]
    board = lb.build_board(records, ["a", "b"], ["t1", "t2"])
    assert board.overall["b"] is None and board.overall["a"] == 1.5  # b beats a on t1 (point intervals)
    assert "incomplete: 1 of 2 cells" in lb.render(board, "table")
    assert board.ordered == ["a", "b"]


def test_one_seed_table_says_its_ranks_carry_no_interval():
    board = lb.build_board([rec("a", "t", 0, 1e-3, 0.9, 0.9)], ["a"], ["t"])
    assert "ranks carry no interval" in lb.render(board, "table")


def test_extrapolation_ranks_length_tasks_and_counts_only_beyond_training():
    lengths = {"40": {"token_acc": 0.9, "seq_acc": 0.1, "beyond_token_acc": 0.5, "beyond_seq_acc": 0.1}}
    cfg = {"min_len": 3, "max_len": 20, "test_lengths": [40, 64], "scored": "all"}
    records = [rec("a", "parity", 0, 1e-3, 1, 1, lengths=lengths, config=cfg)]
    board = lb.build_board(records, ["a"], ["parity"])
    cell = board.cell("a", "parity")
    assert cell.mean == 0.5 and cell.in_dist_mean == 1
    labels = [c.label for c in board.columns]
    assert labels == ["parity in-dist", "parity extrap"]
    assert [c.ranks for c in board.columns] == [False, True]


def test_reference_rows_and_a_column_nobody_beats_is_flagged():
    cfg = {"min_len": 3, "max_len": 20, "test_lengths": [40, 64], "scored": "all"}
    at_chance = {"40": {"token_acc": 0.7, "seq_acc": 0, "beyond_token_acc": 0.5, "beyond_seq_acc": 0}}
    records = [rec(c, "parity", 0, 1e-3, 1.0, 1.0, lengths=at_chance, config=cfg) for c in ("a", "b")]
    board = lb.build_board(records, ["a", "b"], ["parity"])
    extrap = next(c for c in board.columns if c.ranks)
    assert extrap.chance == 0.5 and extrap.reference == pytest.approx(0.5, abs=0.02)
    assert any("no candidate solves it" in f for f in extrap.flags)
    assert any("clears the best trivial predictor" in f for f in extrap.flags)
    in_dist = next(c for c in board.columns if not c.ranks)
    assert any("nothing stays near it" in f for f in in_dist.flags)  # everyone at 1.0 in distribution
    text = lb.render(board, "markdown")
    assert "(chance)" in text and "(best trivial predictor)" in text and "FLAG parity extrap" in text


def test_a_column_that_separates_has_no_flag():
    assert scoring.column_flags([0.99, 0.3], [0.98, 0.25], reference=0.28) == []


def test_modifier_pairs_and_formats():
    records = [rec("x", "t", 0, 1e-3, 0.5, 0.5), rec("x+gate", "t", 0, 1e-3, 0.7, 0.7)]
    board = lb.build_board(records, ["x", "x+gate"], ["t"])
    pairs = lb.modifier_pairs(board)
    assert "+0.200" in pairs.loc[0, "t"]
    text = lb.render(board, "table")
    assert "+0.200" in text and "x+gate" in text
    rows = json.loads(lb.render(board, "json"))
    assert [r["candidate"] for r in rows] == ["x+gate", "x"]
    assert rows[0]["tasks"]["t"]["lr"] == 1e-3 and rows[0]["tasks"]["t"]["n_seeds"] == 1
    assert rows[0]["tasks"]["t"]["ci_low"] is None  # one seed: no interval, and no NaN in the JSON
    with pytest.raises(ValueError, match="unknown format 'yaml'"):
        lb.render(board, "yaml")


def test_markdown_and_html_escape_names():
    name = "<img src=x onerror=alert(1)>|x"
    board = lb.build_board([rec(name, "t", 0, 1e-3, 0.5, 0.5)], [name], ["t"])
    md = lb.render(board, "markdown")
    assert "<img" not in md and "\\|x" in md
    page = lb.render(board, "html", title="group <b> — tier quick")
    assert "<img" not in page and "&lt;img src=x" in page
    assert page.startswith("<!doctype html>") and "<title>group &lt;b&gt; — tier quick</title>" in page
    assert "<script" not in page and "http" not in page


def _board_for_schema():
    import pandas as pd

    cfg = {"min_len": 3, "max_len": 20, "test_lengths": [40, 64], "scored": "all"}
    lengths = {
        "40": {"token_acc": 0.9, "seq_acc": 0.1, "beyond_token_acc": 0.6, "beyond_seq_acc": 0.1},
        "64": {"token_acc": 0.8, "seq_acc": 0.0, "beyond_token_acc": 0.4, "beyond_seq_acc": 0.0},
    }
    records = []
    for s, v in enumerate([0.7, 0.8, 0.9]):
        records.append(rec("a", "t", s, 1e-3, v, v, steps_to_solve=300 if v > 0.8 else None))
        records.append(rec("b[d_state=8]", "t", s, 1e-3, v, v))
        records.append(rec("a", "parity", s, 1e-3, 1, 1, lengths=lengths, config=cfg))
    records.append(rec("a", "t", 0, 1e-2, 0, 0, status="diverged"))
    records.append(rec("b[d_state=8]", "parity", 0, 1e-3, 0, 0, status="failed"))
    records.append(rec("c", "t", 0, 1e-3, 0.1, 0.1))
    extra = pd.DataFrame(
        {"fwd_bwd_tok_s": [1e5, float("nan")], "time_exponent": [1.0, 2.0], "bf16_err": [1e-3, 2e-3]},
        index=["a", "c"],
    )
    return lb.build_board(records, ["a", "b[d_state=8]", "c"], ["t", "parity"], extra=extra)


def test_json_rows_match_the_shipped_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(lb.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    board = _board_for_schema()
    text = lb.render(board, "json")
    rows = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    jsonschema.validate(rows, schema)
    by = {r["candidate"]: r for r in rows}
    a, b, c = by["a"], by["b[d_state=8]"], by["c"]
    assert (b["base"], b["overrides"]) == ("b", {"d_state": 8}) and a["overrides"] == {}
    t = a["tasks"]["t"]
    assert t["n_seeds"] == 3 and t["ci_low"] < t["mean"] < t["ci_high"] and t["lr"] == 1e-3
    assert t["status_counts"] == {"diverged": 1, "ok": 3}
    assert t["tied_with"] == ["b[d_state=8]"] and t["rank"] == 1 and t["tie_group"] == 1
    assert c["tasks"]["t"]["rank"] == 3 and c["tasks"]["t"]["tie_group"] == 2
    assert a["tasks"]["parity"]["extrapolation_by_length"] == pytest.approx({"40": 0.6, "64": 0.4})
    assert b["tasks"]["parity"]["status"] == "failed" and b["tasks"]["parity"]["tied_with"] == []
    assert a["rank"] == 1.0 and a["tie_group"] == 1 and b["tie_group"] == 2  # b ranks last on parity
    assert c["rank"] is None and c["tie_group"] is None and c["complete"] is False
    assert a["bench"] == {"fwd_bwd_tok_s": 1e5, "time_exponent": 1.0, "bf16_err": 1e-3}
    assert c["bench"]["fwd_bwd_tok_s"] is None and b["bench"] is None
    assert a["state_bytes"] == 1024 and a["state_seq_len"] == 64 and a["state_grows"] is False


def test_differences_below_the_resolution_tie_even_with_tight_intervals():
    def cell(name, scores):
        return scoring.cell_verdict([rec(name, "t", s, 1e-3, v, v) for s, v in enumerate(scores)])

    cells = {
        "a": cell("a", [0.999, 0.999, 0.9991]),
        "b": cell("b", [0.994, 0.9941, 0.994]),  # tight, apart, but 0.005 lower: both solved
        "c": cell("c", [0.97, 0.9701, 0.97]),
    }
    assert scoring.task_ranks(cells) == {"a": 1, "b": 1, "c": 3}
