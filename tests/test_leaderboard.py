"""Leaderboard aggregation on synthetic records: lr chosen on valid, CI over seeds, ranks, pairs."""

from __future__ import annotations

import json
import math

import pytest

from harness import leaderboard as lb


def rec(cand, task, seed, lr, valid, test, status="ok", lengths=None, state=1024, params=100):
    r = {
        "kind": "train",
        "candidate": cand,
        "task": task,
        "tier": "quick",
        "seed": seed,
        "lr": lr,
        "status": status,
        "state": {"state_bytes": state, "seq_len": 64},
        "params_mixer": params,
    }
    if status == "ok":
        r["valid"] = {"token_acc": valid, "seq_acc": valid}
        r["test"] = {"token_acc": test, "seq_acc": test}
        r["test_lengths"] = lengths or {}
    return r


def test_lr_chosen_on_valid_not_test():
    records = [rec("a", "t", 0, 1e-3, valid=0.9, test=0.5), rec("a", "t", 0, 1e-2, valid=0.5, test=0.99)]
    agg = lb.aggregate(records)
    assert agg.loc[0, "lr"] == 1e-3 and agg.loc[0, "test"] == 0.5


def test_ci_over_seeds_and_none_for_one_seed():
    records = [rec("a", "t", s, 1e-3, 0.8, x) for s, x in enumerate([0.7, 0.8, 0.9])]
    agg = lb.aggregate(records)
    assert agg.loc[0, "test"] == pytest.approx(0.8)
    assert agg.loc[0, "test_ci"] == pytest.approx(0.1 / math.sqrt(3) * 4.302652729911275, rel=1e-6)
    assert math.isnan(lb.aggregate(records[:1]).loc[0, "test_ci"])


def test_diverged_counts_as_zero_and_ranks_average_over_tasks():
    records = [
        rec("a", "t1", 0, 1e-3, 0.9, 0.9),
        rec("b", "t1", 0, 1e-3, 0.5, 0.5),
        rec("a", "t2", 0, 1e-3, 0, 0, status="diverged"),
        rec("b", "t2", 0, 1e-3, 0.4, 0.4),
    ]
    board = lb.build_leaderboard(records, ["a", "b"], ["t1", "t2"])
    assert board.set_index("candidate").loc["a", "t2"] == 0.0
    assert list(board["rank"]) == [1.5, 1.5]


def test_extrapolation_uses_positions_beyond_training():
    lengths = {"64": {"token_acc": 0.9, "seq_acc": 0.1, "beyond_token_acc": 0.5, "beyond_seq_acc": 0.1}}
    board = lb.build_leaderboard([rec("a", "parity", 0, 1e-3, 1, 1, lengths=lengths)], ["a"], ["parity"])
    assert board.loc[0, "parity extrap"] == 0.5


def test_modifier_pairs_and_formats():
    records = [rec("x", "t", 0, 1e-3, 0.5, 0.5), rec("x+gate", "t", 0, 1e-3, 0.7, 0.7)]
    board = lb.build_leaderboard(records, ["x", "x+gate"], ["t"])
    pairs = lb.modifier_pairs(board, ["t"])
    assert pairs.loc[0, "t diff"] == pytest.approx(0.2)
    text = lb.render(board, ["t"], "table")
    assert "+0.200" in text and "x+gate" in text
    rows = json.loads(lb.render(board, ["t"], "json"))
    assert [r["candidate"] for r in rows] == ["x+gate", "x"]
    with pytest.raises(ValueError, match="unknown format 'yaml'"):
        lb.render(board, ["t"], "yaml")


def test_diverged_run_adds_no_extrapolation_column_to_a_task_without_lengths():
    records = [rec("a", "copy", 0, 1e-3, 0.9, 0.9), rec("b", "copy", 0, 1e-3, 0, 0, status="diverged")]
    board = lb.build_leaderboard(records, ["a", "b"], ["copy"])
    assert "copy extrap" not in board.columns
    lengths = {"64": {"token_acc": 0.9, "seq_acc": 0.1, "beyond_token_acc": 0.7, "beyond_seq_acc": 0.1}}
    records = [
        rec("a", "par", 0, 1e-3, 1, 1, lengths=lengths),
        rec("b", "par", 0, 1e-3, 0, 0, status="diverged"),
    ]
    board = lb.build_leaderboard(records, ["a", "b"], ["par"]).set_index("candidate")
    assert board.loc["b", "par extrap"] == 0.0 and board.loc["a", "par extrap"] == 0.7
