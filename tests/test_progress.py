"""Progress output: a bar on a terminal, a summary line every N runs in a log, nothing drawn after
an interruption message."""

from __future__ import annotations

import io
import shlex

import pytest

from harness import sweep as sweep_mod
from harness.cli import main
from harness.progress import LineProgress, progress_bar


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_summary_lines_not_a_redrawn_bar():
    log = io.StringIO()
    bar = progress_bar(40, "runs", file=log)
    assert isinstance(bar, LineProgress)
    for i in range(40):
        bar.set_postfix_str(f"last: run {i}", False)
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10  # one line per 4 runs
    assert lines[0].startswith("runs: 4/40 done") and "left" in lines[0] and "(last: run 3)" in lines[0]
    assert lines[-1].startswith("runs: 40/40 done")


def test_a_log_gets_a_final_line_and_messages_even_when_quiet():
    log = io.StringIO()
    with progress_bar(7, "runs", file=log, every=5) as bar:
        bar.update(5)
        bar.update(1)
        bar.write("FAILED x on y")
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and lines[1] == "FAILED x on y"  # line at 5, the message, the final line
    assert lines[0].startswith("runs: 5/7 done") and lines[2].startswith("runs: 6/7 done")
    quiet = io.StringIO()
    bar = progress_bar(3, "runs", enabled=False, file=quiet)
    bar.update(3)
    bar.write("FAILED x on y")
    bar.close()
    assert quiet.getvalue() == "FAILED x on y\n"


def test_a_terminal_gets_a_bar():
    tty = FakeTTY()
    bar = progress_bar(3, "runs", file=tty, unit="run")
    assert not isinstance(bar, LineProgress)
    bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue() and "1/3" in tty.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO, FakeTTY])
def test_nothing_is_drawn_after_the_interruption_message(installed_plugin, tmp_path, monkeypatch, stream):
    real_execute = sweep_mod.execute
    calls = []

    def interrupt_on_second(run):
        calls.append(run.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_execute(run)

    monkeypatch.setattr(sweep_mod, "execute", interrupt_on_second)
    err = stream()
    monkeypatch.setattr("sys.stderr", err)
    argv = "compare --candidates toy-ema --baselines '' --tasks toy-last --tier smoke --jobs 1 --seeds 3"
    rc = main([*shlex.split(argv), "--results-dir", str(tmp_path)])
    assert rc == 130
    text = err.getvalue()
    assert text.endswith("harness: interrupted; finished runs are stored and will be reused\n"), repr(text)
    assert "1/3" in text  # the progress of the one finished run was shown before
