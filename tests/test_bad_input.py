"""Bad input through the real CLI (``harness.cli.main``, what the ``harness`` script calls).

One table: command, expected exit code, words the message must contain. Every case must end with
that code and no traceback (stdout and stderr captured at the file-descriptor level, so worker
processes count too), and a usage error (exit 2) must leave the store as it found it: nothing
written. Cases that run something say what they may write. DESIGN §10.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import registry
from harness.cli import main

PLUGIN_DIR = Path(__file__).parent / "plugin_pkg"
TOY = "--candidates toy-ema --baselines '' --tasks toy-last --tier smoke --jobs 1 --quiet"
SMOKE_RUN = "run --candidate softmax --task mqar --tier smoke --quiet --results-dir {res}"
SMOKE_CMP = (
    "compare --candidates softmax --baselines '' --tasks mqar --tier smoke --quiet --results-dir {res}"
)
BENCH = "bench throughput --candidates softmax --baseline none --no-store --quiet"


@dataclass
class Case:
    id: str
    command: str  # shell words; {res} the results dir, {tmp} a scratch dir, {ro} an unwritable dir
    rc: int
    words: list[str]
    setup: str = ""  # "", "toy", "store", "corrupt:<how>", "broken-plugin", "crash-plugin", "runs-file"
    writes: str = ""  # what the command may write: "" nothing, "failed" only failed records, "any"
    check: Callable[[Path, str], None] | None = field(default=None, repr=False)


def _set_aside(kind: str = "train") -> Callable[[Path, str], None]:
    def check(res: Path, text: str) -> None:
        assert list((res / "runs" / kind).glob("*.corrupt*")), "the bad file was not set aside"

    return check


def _redone(res: Path, text: str) -> None:
    _set_aside()(res, text)
    good = [p for p in (res / "runs" / "train").glob("*.json") if p.is_file()]
    assert len(good) == 2 and "1 trained, 1 reused" in text, "the set-aside run was not redone"


CASES: list[Case] = [
    # -- names ---------------------------------------------------------------------------------
    Case(
        "cand-typo",
        "run --candidate softmx --task mqar --tier smoke --results-dir {res}",
        2,
        ["unknown candidate 'softmx'", "did you mean 'softmax'"],
    ),
    Case(
        "task-typo",
        "run --candidate softmax --task mqr --tier smoke --results-dir {res}",
        2,
        ["unknown task 'mqr'", "'mqar'"],
    ),
    Case(
        "tier-typo",
        "run --candidate softmax --task mqar --tier smok --results-dir {res}",
        2,
        ["--tier", "invalid choice: 'smok'", "smoke"],
    ),
    Case(
        "group-typo",
        "compare --group transition --tier smoke --results-dir {res}",
        2,
        ["unknown group 'transition'", "'transitions'"],
    ),
    Case(
        "modifier-typo",
        "run --candidate softmax+gat --task mqar --tier smoke --results-dir {res}",
        2,
        ["unknown modifier", "'gat'", "'gate'"],
    ),
    Case(
        "baseline-typo",
        "compare --candidates softmax --baselines diagonall --tasks mqar --tier smoke --results-dir {res}",
        2,
        ["unknown candidate 'diagonall'", "'diagonal'"],
    ),
    Case(
        "candidates-empty",
        "compare --candidates ,, --tasks mqar --tier smoke --results-dir {res}",
        2,
        ["--candidates", "names nothing"],
    ),
    Case(
        "tasks-empty",
        "compare --candidates softmax --tasks , --tier smoke --results-dir {res}",
        2,
        ["--tasks", "names nothing"],
    ),
    Case(
        "group-and-candidates-unknown",
        "compare --group attention --candidates sofmax --tier smoke --results-dir {res}",
        2,
        ["unknown candidate 'sofmax'", "'softmax'"],
    ),
    Case(
        "compare-no-selection",
        "compare --tier smoke --results-dir {res}",
        2,
        ["compare needs --group G or --candidates A,B"],
    ),
    Case(
        "leaderboard-cand-typo",
        "leaderboard --candidates softmaxx --results-dir {res}",
        2,
        ["unknown candidate 'softmaxx'", "'softmax'"],
        setup="store",
    ),
    Case("list-group-typo", "list --group atention", 2, ["unknown group 'atention'", "'attention'"]),
    Case("list-what-typo", "list candidate", 2, ["invalid choice: 'candidate'", "candidates"]),
    Case("bench-cand-typo", f"{BENCH} --candidates sofmax", 2, ["'sofmax'", "'softmax'"]),
    Case("format-typo", f"{SMOKE_CMP} --format nonsense", 2, ["--format", "invalid choice: 'nonsense'"]),
    Case("lr-search-typo", f"{SMOKE_CMP} --lr-search grids", 2, ["--lr-search", "'grids'", "grid"]),
    # -- run / compare flags: types and ranges --------------------------------------------------
    Case("seed-neg", f"{SMOKE_RUN} --seed -1", 2, ["--seed", "integer >= 0", "closest: 0"]),
    Case("seed-text", f"{SMOKE_RUN} --seed abc", 2, ["--seed", "'abc'", "integer >= 0"]),
    Case("lr-nan", f"{SMOKE_RUN} --lr nan", 2, ["--lr", "finite number", "'nan'"]),
    Case("lr-inf", f"{SMOKE_RUN} --lr inf", 2, ["--lr", "finite number"]),
    Case("lr-neg", f"{SMOKE_RUN} --lr -1", 2, ["--lr", "-1", "> 0"]),
    Case("lr-zero", f"{SMOKE_RUN} --lr 0", 2, ["--lr", "> 0", "e.g. 3e-3"]),
    Case("lr-text", f"{SMOKE_RUN} --lr abc", 2, ["--lr", "'abc'", "learning rate"]),
    Case("seeds-zero", f"{SMOKE_CMP} --seeds 0", 2, ["--seeds", "integer >= 1", "closest: 1"]),
    Case("seeds-neg", f"{SMOKE_CMP} --seeds -1", 2, ["--seeds", "integer >= 1"]),
    Case("seeds-text", f"{SMOKE_CMP} --seeds two", 2, ["--seeds", "'two'"]),
    Case("lrs-text", f"{SMOKE_CMP} --lrs abc", 2, ["--lrs", "'abc'", "not a number"]),
    Case("lrs-commas", f"{SMOKE_CMP} --lrs ,,", 2, ["--lrs", "',,'", "no value"]),
    Case("lrs-empty-item", f"{SMOKE_CMP} --lrs 1e-3,,3e-3", 2, ["--lrs", "an empty item"]),
    Case("lrs-neg", f"{SMOKE_CMP} --lrs 1e-3,-1", 2, ["--lrs", "-1", "> 0"]),
    Case("lrs-nan", f"{SMOKE_CMP} --lrs nan", 2, ["--lrs", "nan", "finite"]),
    Case("jobs-zero", f"{SMOKE_CMP} --jobs 0", 2, ["--jobs", "integer >= 1"]),
    Case("jobs-text", f"{SMOKE_CMP} --jobs many", 2, ["--jobs", "'many'"]),
    Case("look-with-seeds", f"{SMOKE_CMP} --look --seeds 3", 2, ["--look runs one seed", "--seeds 3"]),
    # -- hyperparameters (--set) -------------------------------------------------------------------
    Case(
        "set-unknown",
        f"{SMOKE_RUN} --set n_head=2",
        2,
        ["--set n_head", "unknown hyperparameter 'n_head' of candidate 'softmax'", "'n_heads'"],
    ),
    Case("set-no-equals", f"{SMOKE_RUN} --set n_heads", 2, ["--set expects key=value", "'n_heads'"]),
    Case("set-no-key", f"{SMOKE_RUN} --set =3", 2, ["--set expects key=value"]),
    Case(
        "set-twice",
        f"{SMOKE_RUN} --set n_heads=2 --set n_heads=4",
        2,
        ["--set n_heads", "given twice", "n_heads=2", "n_heads=4"],
    ),
    Case(
        "set-heads-text",
        f"{SMOKE_RUN} --set n_heads=abc",
        2,
        ["--set n_heads='abc'", "takes an integer", "default 4"],
    ),
    Case(
        "set-heads-zero",
        "run --candidate diagonal --task mqar --tier smoke --set n_heads=0 --results-dir {res}",
        2,
        [
            "--set n_heads=0",
            "DiagonalMixer",
            "could not be built",
            "modulo by zero",
            "divisors of d_model=32",
            "closest: 1",
        ],
    ),
    Case(
        "set-heads-neg",
        "run --candidate diagonal --task mqar --tier smoke --set n_heads=-1 --results-dir {res}",
        2,
        ["--set n_heads=-1", "integer >= 0", "closest: 1"],
    ),
    Case("set-heads-float", f"{SMOKE_RUN} --set n_heads=2.5", 2, ["--set n_heads=2.5", "takes an integer"]),
    Case(
        "set-heads-nondivisor",
        "run --candidate diagonal --task mqar --tier smoke --set n_heads=3 --results-dir {res}",
        2,
        ["--set n_heads=3", "divisible", "closest: 2"],
    ),
    Case(
        "set-huge",
        "run --candidate diagonal --task mqar --tier smoke --set d_state=100000000 --results-dir {res}",
        2,
        ["--set d_state=100000000", "parameters", "closest: 64"],
    ),
    Case(
        "set-bool-int",
        "run --candidate diagonal --task mqar --tier smoke --set allow_negative=1 --results-dir {res}",
        2,
        ["--set allow_negative=1", "takes true or false"],
    ),
    Case(
        "set-float-nan",
        "run --candidate diagonal --task mqar --tier smoke --set gate_temperature=nan --results-dir {res}",
        2,
        ["--set gate_temperature=nan", "finite number"],
    ),
    Case(
        "set-plugin-float-text",
        "run --candidate toy-ema --task toy-last --tier smoke --set decay=high --results-dir {res}",
        2,
        ["--set decay='high'", "toy-ema", "takes a number"],
        setup="toy",
    ),
    Case(
        "variant-label-zero",
        "compare --candidates 'diagonal[n_heads=0]' --baselines '' --tasks mqar --tier smoke --results-dir {res}",
        2,
        ["variant diagonal[n_heads=0]", "could not be built", "closest: 1"],
    ),
    Case(
        "variant-label-unknown",
        "compare --candidates 'diagonal[nheads=2]' --baselines '' --tasks mqar --tier smoke --results-dir {res}",
        2,
        ["unknown hyperparameter 'nheads'", "'n_heads'", "diagonal[nheads=2]"],
    ),
    Case(
        "sweep-bad-value",
        "compare --candidates diagonal --sweep n_heads=4,3 --baselines '' --tasks mqar --tier smoke "
        "--results-dir {res}",
        2,
        ["variant diagonal[n_heads=3]", "divisible", "closest: 2"],
    ),
    Case("sweep-no-values", f"{SMOKE_CMP} --sweep n_heads=", 2, ["--sweep", "lists no values"]),
    # -- task settings (--task-set) ---------------------------------------------------------------
    Case(
        "task-set-unknown",
        f"{SMOKE_RUN} --task-set num_pair=3",
        2,
        ["--task-set num_pair", "unknown config field 'num_pair' of task 'mqar'", "'num_pairs'"],
    ),
    Case(
        "task-set-zero",
        f"{SMOKE_RUN} --task-set num_pairs=0",
        2,
        ["--task-set num_pairs=0", "num_pairs=0 is too small", ">= 1"],
    ),
    Case(
        "task-set-text",
        f"{SMOKE_RUN} --task-set num_pairs=abc",
        2,
        ["--task-set num_pairs='abc'", "takes an integer"],
    ),
    Case("task-set-short", f"{SMOKE_RUN} --task-set seq_len=3", 2, ["--task-set seq_len=3", ">= 16"]),
    Case(
        "task-set-plugin-text",
        "run --candidate toy-ema --task toy-last --tier smoke --task-set vocab=abc --results-dir {res}",
        2,
        ["--task-set vocab='abc'", "takes an integer"],
        setup="toy",
    ),
    # -- training settings (--train-set) -------------------------------------------------------------
    Case(
        "train-steps-zero",
        f"{SMOKE_RUN} --train-set steps=0",
        2,
        ["--train-set steps=0", "integer >= 1", "closest: 1"],
    ),
    Case("train-steps-neg", f"{SMOKE_RUN} --train-set steps=-3", 2, ["--train-set steps=-3", "integer >= 1"]),
    Case("train-steps-text", f"{SMOKE_RUN} --train-set steps=abc", 2, ["--train-set steps='abc'", "integer"]),
    Case("train-steps-float", f"{SMOKE_RUN} --train-set steps=2.5", 2, ["--train-set steps=2.5", "integer"]),
    Case(
        "train-batch-zero", f"{SMOKE_RUN} --train-set batch_size=0", 2, ["--train-set batch_size=0", ">= 1"]
    ),
    Case(
        "train-lrs-text", f"{SMOKE_RUN} --train-set lrs=abc", 2, ["--train-set lrs='abc'", "learning rates"]
    ),
    Case("train-lrs-empty", f"{SMOKE_RUN} --train-set lrs=()", 2, ["--train-set lrs=()", "non-empty"]),
    Case("train-lrs-neg", f"{SMOKE_RUN} --train-set lrs=(1e-3,-1)", 2, ["lrs", "> 0", "-1"]),
    Case("train-warmup-one", f"{SMOKE_RUN} --train-set warmup_frac=1", 2, ["warmup_frac=1", ">= 0 and < 1"]),
    Case(
        "train-threshold-zero",
        f"{SMOKE_RUN} --train-set solve_threshold=0",
        2,
        ["solve_threshold=0", "> 0 and <= 1"],
    ),
    Case(
        "train-threshold-big",
        f"{SMOKE_RUN} --train-set solve_threshold=1.5",
        2,
        ["solve_threshold=1.5", "<= 1"],
    ),
    Case("train-eval-every-zero", f"{SMOKE_RUN} --train-set eval_every=0", 2, ["eval_every=0", ">= 1"]),
    Case("train-n-check-zero", f"{SMOKE_RUN} --train-set n_check=0", 2, ["n_check=0", ">= 1"]),
    Case("train-clip-zero", f"{SMOKE_RUN} --train-set grad_clip=0", 2, ["grad_clip=0", "> 0"]),
    Case(
        "train-unknown",
        f"{SMOKE_RUN} --train-set step=3",
        2,
        ["--train-set step", "unknown training setting 'step'", "'steps'"],
    ),
    Case(
        "train-d-model",
        "run --candidate diagonal --task mqar --tier smoke --train-set d_model=30 --results-dir {res}",
        2,
        ["--train-set d_model=30", "could not be built", "divisible"],
    ),
    # -- devices ---------------------------------------------------------------------------------------
    Case("device-typo", f"{SMOKE_RUN} --device tpu9", 2, ["--device", "'tpu9' is not a device", "cpu, cuda"]),
    Case("device-kind", f"{SMOKE_RUN} --device meta", 2, ["--device", "'meta' is not a device", "cpu, cuda"]),
    Case("device-empty", f"{SMOKE_CMP} --device ''", 2, ["--device", "'' is not a device"]),
    Case("device-auto-train", f"{SMOKE_RUN} --device auto", 2, ["--device", "'auto'", "cpu, cuda, cuda:N"]),
    Case("bench-device", f"{BENCH} --device tpu", 2, ["--device", "'tpu' is not a device", "auto"]),
    Case("gate-device-index", "gate --device cuda:1", 2, ["--device", "'cuda:1'", "cpu, cuda, auto"]),
    Case("history-device", "history compare A B --device gpu", 2, ["--device", "'gpu'", "did you mean"]),
    # -- benchmark flags ---------------------------------------------------------------------------------
    Case("bench-batch-zero", f"{BENCH} --batch 0", 2, ["--batch", "integer >= 1"]),
    Case("bench-batch-neg", f"{BENCH} --batch -1", 2, ["--batch", "integer >= 1"]),
    Case("bench-threads-zero", f"{BENCH} --threads 0", 2, ["--threads", "integer >= 1"]),
    Case("bench-d-model-zero", f"{BENCH} --d-model 0", 2, ["--d-model", "integer >= 1"]),
    Case("bench-seq-lens-zero", f"{BENCH} --seq-lens 64,0", 2, ["--seq-lens", "0 in '64,0'", ">= 1"]),
    Case("bench-seq-lens-text", f"{BENCH} --seq-lens 64,x", 2, ["--seq-lens", "'x'", "not an integer"]),
    Case("bench-seq-lens-commas", f"{BENCH} --seq-lens ,", 2, ["--seq-lens", "no value"]),
    Case("bench-time-cap-zero", f"{BENCH} --time-cap 0", 2, ["--time-cap", "> 0"]),
    Case("bench-time-cap-nan", f"{BENCH} --time-cap nan", 2, ["--time-cap", "finite"]),
    Case("bench-rounds-zero", f"{BENCH} --rounds 0", 2, ["--rounds", "integer >= 1"]),
    Case("bench-min-run-time-neg", f"{BENCH} --min-run-time -1", 2, ["--min-run-time", "> 0"]),
    Case("bench-chunk-zero", "bench scans --chunk-size 0 --no-store", 2, ["--chunk-size", "integer >= 1"]),
    Case(
        "bench-stability-neg",
        "bench numerics --candidates softmax --stability-len -1 --no-store",
        2,
        ["--stability-len", "integer >= 0"],
    ),
    # -- paths ------------------------------------------------------------------------------------------
    Case(
        "results-dir-file",
        "run --candidate softmax --task mqar --tier smoke --results-dir {tmp}/afile",
        2,
        ["--results-dir", "afile", "is a file, not a directory"],
        setup="file",
    ),
    Case(
        "results-dir-unwritable",
        "run --candidate softmax --task mqar --tier smoke --results-dir {ro}/res",
        2,
        ["--results-dir", "cannot write there"],
        setup="ro",
    ),
    Case("results-dir-runs-file", f"{SMOKE_RUN}", 2, ["--results-dir", "runs is a file"], setup="runs-file"),
    Case(
        "results-dir-missing-leaderboard",
        "leaderboard --results-dir {tmp}/nowhere",
        2,
        ["--results-dir", "nowhere", "no such directory"],
    ),
    Case(
        "bench-results-dir-file",
        "bench scans --families dense --results-dir {tmp}/afile",
        2,
        ["--results-dir", "is a file"],
        setup="file",
    ),
    Case("output-dir", f"{SMOKE_CMP} --output {{tmp}}", 2, ["--output", "is a directory"]),
    Case(
        "output-unwritable",
        f"{SMOKE_CMP} --output {{ro}}/board.md",
        2,
        ["--output", "cannot write"],
        setup="ro",
    ),
    Case(
        "output-parent-file",
        f"{SMOKE_CMP} --output {{tmp}}/afile/board.md",
        2,
        ["--output", "is a file"],
        setup="file",
    ),
    Case("bench-output-dir", f"{BENCH} --output {{tmp}}", 2, ["--output", "is a directory"]),
    Case(
        "spaces-in-names",
        f"compare {TOY} --results-dir '{{tmp}}/my results' --output '{{tmp}}/my board.md'",
        0,
        ["leaderboard written to", "my board.md"],
        setup="toy",
        writes="any",
    ),
    # -- show -----------------------------------------------------------------------------------------------
    Case("show-glob", "show '*' --results-dir {res}", 2, ["'*' is not a run id", "hex"], setup="store"),
    Case("show-outside", "show ../../x --results-dir {res}", 2, ["'../../x' is not a run id"], setup="store"),
    Case(
        "show-unknown",
        "show deadbeef --results-dir {res}",
        2,
        ["no record with run id 'deadbeef'"],
        setup="store",
    ),
    Case(
        "show-corrupt",
        "show {first} --results-dir {res}",
        1,
        ["corrupt record", "not valid JSON", "set aside"],
        setup="corrupt:truncated",
        writes="aside",
        check=_set_aside(),
    ),
    # -- corrupt stores: compare redoes the run, leaderboard lists and goes on, doctor reports ---------------
    *[
        Case(
            f"compare-corrupt-{how}",
            f"compare {TOY} --seeds 2 --results-dir {{res}}",
            0,
            ["corrupt record", words, "set aside", "its run is redone"],
            setup=f"corrupt:{how}",
            writes="any",
            check=_redone,
        )
        for how, words in (
            ("truncated", "not valid JSON"),
            ("empty", "the file is empty"),
            ("binary", "binary"),
            ("list", "a record is a JSON object, this is a list"),
            ("no-valid", "a record of status ok needs 'valid' scores"),
            ("string-acc", "test.token_acc must be a number"),
            ("wrong-name", "does not match its file name"),
            ("foreign-content", "not the hash of the record's identity"),
            ("directory", "a folder, not a record file"),
        )
    ],
    *[
        Case(
            f"leaderboard-corrupt-{how}",
            f"leaderboard {TOY.replace(' --jobs 1 --quiet', '')} --results-dir {{res}}",
            1,
            ["corrupt record", words, "left out of the board", "toy-ema"],
            setup=f"corrupt:{how}",
            writes="aside",
            check=_set_aside(),
        )
        for how, words in (
            ("truncated", "not valid JSON"),
            ("no-valid", "needs 'valid'"),
            ("string-acc", "must be a number"),
            ("foreign-content", "belongs to another run"),
            ("directory", "a folder"),
        )
    ],
    Case(
        "doctor-corrupt",
        "doctor --results-dir {res}",
        1,
        ["set aside 1 corrupt record", "not valid JSON", ".corrupt"],
        setup="corrupt:truncated",
        writes="aside",
        check=_set_aside(),
    ),
    Case("doctor-missing", "doctor --results-dir {tmp}/nowhere", 2, ["no such directory"]),
    Case(
        "leaderboard-partial",
        "leaderboard --candidates toy-ema --baselines '' --tier smoke --tasks "
        "toy-last,mqar --results-dir {res}",
        1,
        ["incomplete leaderboard", "toy-ema: mqar", "no rank"],
        setup="store",
    ),
    # -- plug-ins --------------------------------------------------------------------------------------------
    Case(
        "plugin-import-list",
        "list candidates",
        0,
        ["entry point 'broken'", "broken_import_plugin", "ModuleNotFoundError", "toy-ema"],
        setup="broken-plugin",
    ),
    Case(
        "plugin-import-unknown",
        "run --candidate broken-cand --task toy-last --tier smoke --results-dir {res}",
        2,
        ["unknown candidate 'broken-cand'", "'broken' failed to load"],
        setup="broken-plugin",
    ),
    Case(
        "plugin-import-others-work",
        f"compare {TOY} --results-dir {{res}}",
        0,
        ["entry point 'broken'", "1 trained"],
        setup="broken-plugin",
        writes="any",
    ),
    Case(
        "plugin-raises-in-forward",
        "compare --candidates crash-raises --baselines '' --tasks toy-last "
        "--tier smoke --jobs 1 --quiet --results-dir {res}",
        1,
        ["NONCONFORMING crash-raises", "plug-in kernel exploded"],
        setup="crash-plugin",
        writes="failed",
    ),
    Case(
        "plugin-segfault-in-forward",
        "compare --candidates crash-segfault --baselines '' --tasks toy-last "
        "--tier smoke --jobs 2 --quiet --results-dir {res}",
        1,
        ["NONCONFORMING crash-segfault", "the process checking it died"],
        setup="crash-plugin",
        writes="failed",
    ),
]


# -- setting up each case ---------------------------------------------------------------------------
def _install(tmp_path: Path, monkeypatch, entry_points: str) -> None:
    """Install plug-ins the way pip would: a dist-info with entry_points.txt on sys.path."""
    dist = tmp_path / "site" / "test_plugins-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    # the CLI loads them (and reports a broken one) the way a fresh process does
    monkeypatch.setattr(registry, "_LOADED", False)
    registry._PLUGIN_ERRORS.clear()


TOY_EP = (
    "[mixer_harness.candidates]\ntoy = toy_mixer_plugin\n\n[mixer_harness.tasks]\ntoy = toy_mixer_plugin\n"
)
BROKEN_EP = (
    "[mixer_harness.candidates]\ntoy = toy_mixer_plugin\nbroken = broken_import_plugin\n\n"
    "[mixer_harness.tasks]\ntoy = toy_mixer_plugin\n"
)
CRASH_EP = TOY_EP.replace(
    "toy = toy_mixer_plugin\n\n", "toy = toy_mixer_plugin\ncrash = crashing_plugin\n\n", 1
)


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores modes: then a read-only mount)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/sys/kernel"), Path("/proc/self")):
        try:
            fd, probe = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no unwritable directory on this machine")


def _toy_store(capfd, res: Path) -> None:
    rc = main(shlex.split(f"compare {TOY} --seeds 2 --results-dir '{res}'"))
    out, err = capfd.readouterr()
    assert rc == 0, err


def _corrupt(res: Path, how: str) -> str:
    """Damage the first of the two stored records; its run id."""
    files = sorted((res / "runs" / "train").glob("*.json"))
    first, second = files[0], files[1]
    rec = json.loads(first.read_text())
    if how == "truncated":
        first.write_text(first.read_text()[:200])
    elif how == "empty":
        first.write_text("")
    elif how == "binary":
        first.write_bytes(b"\x80\x81\xfe\xff" * 64)
    elif how == "list":
        first.write_text(json.dumps([rec]))
    elif how == "no-valid":
        del rec["valid"]
        first.write_text(json.dumps(rec))
    elif how == "string-acc":
        rec["test"]["token_acc"] = "0.9"
        first.write_text(json.dumps(rec))
    elif how == "wrong-name":  # another run's record copied under this name
        shutil.copy(second, first)
    elif how == "foreign-content":  # another run's content, its run id changed to fit the file name
        other = json.loads(second.read_text())
        other["run_id"] = rec["run_id"]
        first.write_text(json.dumps(other))
    elif how == "directory":
        first.unlink()
        first.mkdir()
        (first / "x").write_text("{}")
    else:  # pragma: no cover
        raise ValueError(how)
    return rec["run_id"]


def _snapshot(root: Path) -> dict[str, float]:
    if not root.exists():
        return {}
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capfd):
    res = tmp_path / "res"
    subs = {"res": str(res), "tmp": str(tmp_path), "first": ""}
    try:
        if case.setup in ("toy", "store") or case.setup.startswith("corrupt:"):
            _install(tmp_path, monkeypatch, TOY_EP)
        elif case.setup == "broken-plugin":
            _install(tmp_path, monkeypatch, BROKEN_EP)
        elif case.setup == "crash-plugin":
            _install(tmp_path, monkeypatch, CRASH_EP)
        if case.setup == "store" or case.setup.startswith("corrupt:"):
            _toy_store(capfd, res)
        if case.setup.startswith("corrupt:"):
            subs["first"] = _corrupt(res, case.setup.partition(":")[2])
        if case.setup == "file":
            (tmp_path / "afile").write_text("not a directory\n")
        if case.setup == "runs-file":
            res.mkdir()
            (res / "runs").write_text("not a directory\n")
        if case.setup == "ro" or "{ro}" in case.command:
            subs["ro"] = str(_unwritable(tmp_path))
        argv = [w.format(**subs) for w in shlex.split(case.command)]
        before = _snapshot(res)
        capfd.readouterr()
        rc = main(argv)
        out, err = capfd.readouterr()
        text = out + err
        assert "Traceback" not in text and "internal error" not in text, text
        assert rc == case.rc, text
        for word in case.words:
            assert word in text, f"{word!r} not in:\n{text}"
        after = _snapshot(res)
        new = {p for p in after if before.get(p) != after[p]}
        if case.writes in ("", "aside"):
            records = [p for p in new if p.endswith(".json")]
            assert not records, f"a record was written: {records}"
        if case.writes == "failed":  # failed runs, or the conformance verdict that kept it from training
            statuses = {json.loads(Path(p).read_text())["status"] for p in new if p.endswith(".json")}
            assert statuses <= {"failed", "nonconforming"}, statuses
        if case.rc == 2:
            assert not new, f"a usage error wrote {sorted(new)}"
            assert before or not res.exists(), "a usage error created the results directory"
        if case.check is not None:
            case.check(res, text)
    finally:
        for name in ("toy-ema", "toy-last", "crash-raises", "crash-segfault"):
            registry.unregister(name)
        for mod in ("toy_mixer_plugin", "crashing_plugin", "broken_import_plugin"):
            sys.modules.pop(mod, None)
        registry._PLUGIN_ERRORS.clear()


def test_the_table_is_big_enough():
    assert len(CASES) >= 60
    assert sum(c.rc == 2 for c in CASES) >= 60


@pytest.mark.parametrize(
    "command,rc,word",
    [
        ("list candidates", 0, "entry point 'broken'"),
        (
            "run --candidate diagonal --task mqar --tier smoke --set n_heads=0 --results-dir {res}",
            2,
            "closest: 1",
        ),
        ("show ../../x --results-dir {tmp}", 2, "is not a run id"),
    ],
)
def test_a_fresh_process_prints_no_traceback(command, rc, word, tmp_path):
    """The same through ``python -m harness.cli`` in a new interpreter, plug-ins found on its path."""
    import subprocess

    dist = tmp_path / "site" / "test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(BROKEN_EP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(PLUGIN_DIR)])}
    argv = [w.format(res=tmp_path / "res", tmp=tmp_path) for w in shlex.split(command)]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == rc and word in text and "Traceback" not in text, text
    assert text.count("failed to load") <= 1, text  # the broken plug-in is reported once, if loaded
    assert not (tmp_path / "res").exists()
