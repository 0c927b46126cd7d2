"""The command line as one surface: every family through one error policy and exit codes, the same
flag for the same thing, help for every option, a version, and a parser that imports nothing heavy."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from harness import cli, options
from harness.errors import EXIT_CODES, CommandFailed, UsageError

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pandas", "scipy", "tqdm", "matplotlib", "numpy")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def _parsers(parser: argparse.ArgumentParser, path: str = "harness"):
    """(command path, parser) for the parser and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


# -- light to import ---------------------------------------------------------------------------------------
def test_importing_the_cli_and_building_its_parser_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        "import harness.cli\n"
        "harness.cli.build_parser()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], "harness.cli imports heavy modules at import or parser build time"


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["bench", "throughput", "--help"]])
def test_help_runs_without_heavy_imports(argv):
    code = (
        "import json, sys\n"
        "from harness.cli import main\n"
        f"rc = main({argv!r})\n"
        f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]), file=sys.stderr)\n"
    )
    proc = _python(code)
    rc, heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    assert rc == 0 and heavy == [], proc.stderr
    assert "usage: harness" in proc.stdout


def test_the_public_api_still_imports_from_the_package():
    code = (
        "import sys\n"
        "import harness\n"
        "assert 'torch' not in sys.modules\n"
        "from harness import Mixer, Task, register_candidate, get_candidate, IGNORE\n"
        "assert 'torch' in sys.modules and Mixer.__module__ == 'harness.mixer'\n"
        "assert set(harness.__all__) <= set(dir(harness))\n"
        "from harness import registry, validate\n"
        "print(harness.__version__)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == metadata.version("mixer-harness")


def test_version_prints_the_package_version_without_torch():
    code = (
        "import sys\n"
        "from harness.cli import main\n"
        "rc = main(['--version'])\n"
        "assert rc == 0 and 'torch' not in sys.modules, (rc, 'torch' in sys.modules)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mixer-harness {metadata.version('mixer-harness')}"


# -- help for everything -----------------------------------------------------------------------------------
def test_every_command_and_option_has_help():
    missing = []
    for path, parser in _parsers(cli.build_parser()):
        visible_dests = {a.dest for a in parser._actions if a.help is not argparse.SUPPRESS}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not (choice.help or "").strip():
                        missing.append(f"{path} {choice.dest}: a subcommand without help")
                continue
            if action.help is argparse.SUPPRESS:  # only a hidden alias of a documented option
                if action.dest not in visible_dests:
                    missing.append(f"{path} {name}: hidden, and not an alias of a documented option")
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {name}")
    assert not missing, "options without help:\n" + "\n".join(missing)


def test_the_exit_codes_are_in_the_help_and_the_readme():
    parser = cli.build_parser()
    assert EXIT_CODES in parser.format_help()
    readme = (ROOT / "README.md").read_text()
    for code, words in ((0, "ok"), (1, "something failed"), (2, "usage error"), (130, "interrupted")):
        assert f"{code} {words}" in readme, f"the README's exit codes lack '{code} {words}'"


# -- the same flag for the same thing ----------------------------------------------------------------------
def test_one_device_option_everywhere():
    seen = 0
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if "--device" not in action.option_strings:
                continue
            seen += 1
            assert action.option_strings == ["--device"] and action.metavar == "DEVICE", path
            assert getattr(action.type, "__name__", "") == "device", f"{path}: --device not checked by form"
            assert action.help.count("cpu, cuda") == 1, f"{path}: {action.help}"
    assert seen >= 9  # run, compare, bench x3, gate, machine, history record/backfill/compare


def test_no_command_has_both_quiet_spellings_visible():
    for path, parser in _parsers(cli.build_parser()):
        flags = {s: a for a in parser._actions for s in a.option_strings}
        if "--no-progress" in flags:
            assert "--quiet" in flags and flags["--no-progress"].dest == "quiet", path
            assert flags["--no-progress"].help is argparse.SUPPRESS, path


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_lists_are_comma_separated_and_repeatable():
    args = _parse("compare", "--candidates", "a,b", "--candidates", "c", "--tasks", "x", "--tasks", "y,z")
    assert args.candidates == "a,b,c" and args.tasks == "x,y,z"
    assert args.baselines == options.DEFAULT_BASELINES  # the default, untouched
    assert _parse("compare", "--baselines", "", "--candidates", "a").baselines == ""
    assert (
        _parse("compare", "--baselines", "s", "--baselines", "d").baselines == "s,d"
    )  # replaces the default
    assert _parse("compare", "--lrs", "1e-3,3e-3", "--lrs", "1e-2").lrs == [1e-3, 3e-3, 1e-2]
    bench = _parse("bench", "throughput", "--candidate", "a", "--candidates", "b,c", "--seq-lens", "16")
    assert bench.candidates == ["a", "b", "c"] and bench.seq_lens == [16]
    bench = _parse("bench", "numerics", "--dtypes", "fp32", "--dtypes", "bf16,fp32", "--seq-lens", "8,16")
    assert bench.dtypes == ["fp32", "bf16"] and bench.stability_dtypes == ["float32"]
    assert _parse("report", "--group", "a", "--group", "b,c").group == "a,b,c"
    assert _parse("check", "--dtypes", "bf16").dtypes == "bf16"
    assert _parse("gate", "--candidates", "a", "--candidates", "b").candidates == "a,b"


def test_quiet_and_its_old_spelling():
    assert _parse("bench", "scans", "--quiet").quiet
    assert _parse("bench", "scans", "--no-progress").quiet  # kept for scripts, hidden from the help
    assert _parse("compare", "--candidates", "a", "--no-progress").quiet
    assert not _parse("run", "--candidate", "a", "--task", "b").quiet
    assert _parse("machine", "--name", "x").machine == "x"  # the old spelling of --machine


# -- one error policy --------------------------------------------------------------------------------------
def _raising(exc: BaseException, **defaults):
    def build() -> argparse.ArgumentParser:
        def func(args):
            raise exc

        parser = argparse.ArgumentParser(prog="harness")
        parser.set_defaults(func=func, **defaults)
        return parser

    return build


@pytest.mark.parametrize(
    "exc,defaults,rc,words",
    [
        (UsageError("--x 3: bad"), {}, 2, "harness: error: --x 3: bad"),
        (ValueError("bad value"), {}, 2, "harness: error: bad value"),
        (CommandFailed("a worker died"), {}, 1, "harness: error: a worker died"),
        (CommandFailed("no verdict"), {"failure_exit": 2}, 2, "harness: error: no verdict"),
        (
            FileNotFoundError(2, "No such file or directory", "x.json"),
            {},
            1,
            "harness: error: x.json: No such",
        ),
        (subprocess.TimeoutExpired(["asv"], 5), {"failure_exit": 2}, 2, "timed out after 5 seconds"),
        (RuntimeError("oops"), {}, 1, "harness: internal error: RuntimeError: oops"),
        (RuntimeError("oops"), {"failure_exit": 2}, 2, "HARNESS_TRACEBACK=1"),
        (KeyboardInterrupt(), {"on_interrupt": "runs are kept"}, 130, "harness: interrupted; runs are kept"),
    ],
)
def test_one_error_policy(monkeypatch, capsys, exc, defaults, rc, words):
    monkeypatch.setattr(cli, "build_parser", _raising(exc, **defaults))
    monkeypatch.delenv("HARNESS_TRACEBACK", raising=False)
    assert cli.main([]) == rc
    out, err = capsys.readouterr()
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_traceback_on_request(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", _raising(RuntimeError("oops")))
    monkeypatch.setenv("HARNESS_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="oops"):
        cli.main([])


def test_every_family_answers_through_the_one_policy(capsys, tmp_path):
    """The families' own entry points run through ``harness.cli.main``: the same one-line errors."""
    from harness import history
    from harness.bench import cli as bench_cli
    from harness.gate import cli as gate_cli

    missing = str(tmp_path / "nowhere" / "asv.conf.json")
    cases = [
        (lambda: bench_cli.main(["throughput", "--candidates", "nope", "--no-store"]), 2, "'nope'"),
        (lambda: gate_cli.main(["--base", "HEAD", "--update-baseline"]), 2, "--update-baseline"),
        (lambda: history.main(["history", "compare", "A", "B", "--config", missing]), 2, "asv.conf.json"),
        (lambda: history.main(["machine", "--config", missing, "--device", "cpu"]), 2, "asv.conf.json"),
    ]
    for call, rc, words in cases:
        got = call()
        out, err = capsys.readouterr()
        assert got == rc and words in err, (got, err)
        assert err.startswith("harness: error: ") and len(err.strip().splitlines()) == 1, err
