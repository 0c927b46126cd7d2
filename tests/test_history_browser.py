"""The published history report, loaded in a real browser (headless Chromium).

Three commits of a tiny git project (see test_asv_config.make_tiny_project: a package whose value
changes per commit) are backfilled with ``harness history``, published (self-contained: asv's CDN
scripts replaced by the shipped copies, since this machine has no internet), served on 127.0.0.1
by the harness's own server (asv's page fetches its JSON, which a file:// URL cannot), and loaded
in Chromium. Checks: the summary grid and a benchmark's graph page draw their plots (flot canvases
in the DOM), the browser logs no console message, every request the page makes succeeds, and the
graph's screenshot is not blank. Skipped, saying why, without Chromium (Debian: apt-get install
chromium) or asv.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

pytest.importorskip("asv", reason="asv is not installed (pip install -e '.[asv]')")

from test_asv_config import make_tiny_project  # noqa: E402

from harness import history  # noqa: E402
from harness.worktree import build_import_root  # noqa: E402

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium here (Debian: apt-get install chromium)"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
    "--window-size=1280,900",
]


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console_messages(stderr: str) -> list[str]:
    """Chromium logs every console message (log, warn, error, uncaught exceptions) as ``:CONSOLE``."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def png_is_not_blank(path: Path) -> bool:
    """True when the PNG's decompressed scanlines hold more than a flat colour (no image library)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return len(set(raw)) > 16


@pytest.mark.slow
def test_history_report_renders_in_chromium(tmp_path, monkeypatch):
    root = tmp_path / "tiny"
    shas = make_tiny_project(root, values=(1, 2, 3))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # asv's machine file, not the user's
    monkeypatch.setenv("ASV_PYTHONPATH", str(build_import_root(root, tmp_path / "installed")))
    cfg = str(root / "asv.conf.json")
    assert history.main(["history", "backfill", shas[0], "--config", cfg, "--device", "cpu"]) == 0
    assert (
        history.main(["history", "backfill", f"{shas[0]}..{shas[-1]}", "--config", cfg, "--device", "cpu"])
        == 0
    )
    html = tmp_path / "html"
    assert history.main(["history", "publish", "--config", cfg, "--html-dir", str(html)]) == 0
    index = (html / "index.html").read_text()
    assert "https://cdn" not in index and "https://code.jquery.com" not in index  # self-contained

    requests: list[tuple[str, int]] = []
    server, url = history.serve_in_thread(html, requests=requests)
    try:
        grid = chromium(url, tmp_path / "profile1", "--dump-dom")
        graph_url = url + "#bench_tiny.Suite.track_value"
        graph = chromium(graph_url, tmp_path / "profile2", "--dump-dom")
        shot = tmp_path / "history-graph.png"
        chromium(graph_url, tmp_path / "profile3", f"--screenshot={shot}")
    finally:
        server.shutdown()
        server.server_close()

    assert grid.returncode == 0 and graph.returncode == 0, grid.stderr[-2000:] + graph.stderr[-2000:]
    for page in (grid, graph):
        assert "airspeed velocity error" not in page.stdout  # asv's page for scripts that failed to load
        assert console_messages(page.stderr) == []
    # the grid: one small plot per benchmark, each a flot canvas
    assert grid.stdout.count('class="benchmark-plot"') == 2
    assert grid.stdout.count('<canvas class="flot-base"') >= 2
    # the graph page: the main plot and its overview, drawn
    main = graph.stdout[graph.stdout.index('id="main-graph"') :]
    assert '<canvas class="flot-base"' in main
    assert "n-10" in graph.stdout and "n-20" in graph.stdout  # the legend: both parameter values
    # every request answered, the data among them
    assert requests and all(status < 400 for _, status in requests), [r for r in requests if r[1] >= 400]
    paths = [p.split("?")[0] for p, _ in requests]
    assert any(p.endswith("index.json") for p in paths)
    assert any("/graphs/" in p and "track_value" in p for p in paths)
    assert shot.exists() and shot.stat().st_size > 10_000 and png_is_not_blank(shot)
