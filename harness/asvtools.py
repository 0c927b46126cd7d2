"""Running asv the way the harness needs it, around asv's known traps.

- The benchmarks run in asv's ``existing`` environment (the current interpreter, with torch already
  installed): asv then saves nothing unless ``--set-commit-hash`` is given, so every run passes it.
- ``asv continuous`` refuses the existing environment, and ``asv compare`` exits 0 even when
  something got worse: :func:`parse_compare` reads its table and the harness decides the exit code.
- asv reads machine entries only from ``~/.asv-machine.json`` and, with two entries there and no
  ``-m``, stops to ask questions (or fails without a terminal). The harness keeps its own machine
  file inside the project (``.asv/machine.json``, written from what :mod:`harness.machine` detects),
  points asv at it, and always passes ``-m <machine class>``.
- A commit other than the checked-out one runs with that commit's packages first on the benchmark
  processes' ``sys.path`` (:mod:`harness.worktree`). Not through PYTHONPATH: asv's benchmark runner
  removes PYTHONPATH's entries from ``sys.path``; it puts ``ASV_PYTHONPATH``'s first instead. The
  benchmark *suite* is always the current tree's ``benchmarks/`` (asv's model: one suite, measured
  against many versions of the project).
- ``asv.conf.json`` keys asv does not know are silently ignored; tests/test_asv_config.py checks
  every key against :func:`known_config_keys`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT
from harness.machine import MachineInfo, detect, write_asv_machine_file
from harness.worktree import GitError, git, rev_parse

CONFIG_NAME = "asv.conf.json"
DEVICE_ENV = "HARNESS_ASV_DEVICE"  # the benchmarks' device: auto (CUDA when available), cpu, cuda

# Run asv's command line with its machine file redirected (asv has no option for it). Runs as
# ``python -c`` so the asv process itself imports no ``harness`` (PYTHONPATH may point at another
# commit's code, meant for the benchmark processes only).
_ASV_MAIN = """\
import sys
from asv.machine import MachineCollection
_path = sys.argv.pop(1)
MachineCollection.get_machine_file_path = staticmethod(lambda: _path)
from asv.main import main
sys.argv[0] = "asv"
sys.exit(main())
"""


class AsvError(RuntimeError):
    """asv is missing, misconfigured or failed; the message says which and how to fix it."""


def known_config_keys() -> set[str]:
    """Every top-level key asv 0.6 reads from asv.conf.json (asv ignores others silently)."""
    from asv.config import Config

    return set(Config().__dict__) | {"version", "build_cache_size"}


def find_config(start: Path | None = None) -> Path:
    """asv.conf.json in ``start`` (default: the working directory) or a parent, else the harness's."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).exists():
            return d / CONFIG_NAME
    if (REPO_ROOT / CONFIG_NAME).exists():
        return REPO_ROOT / CONFIG_NAME
    raise AsvError(f"no {CONFIG_NAME} in {here} or its parents, nor in {REPO_ROOT}")


@dataclass
class CompareRow:
    mark: str  # "+" worse, "-" better, "!" newly failing, "*" fixed, "x" not comparable, " " same
    before: str
    after: str
    ratio: str
    benchmark: str

    @property
    def regression(self) -> bool:
        return self.mark in ("+", "!")


def parse_compare(text: str) -> list[CompareRow]:
    """The rows of ``asv compare`` output (its GitHub-style tables)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 5 or cells[0] == "Change":
            continue
        rows.append(CompareRow(cells[0] or " ", cells[1], cells[2], cells[3], cells[4]))
    return rows


@dataclass
class AsvProject:
    """An asv project: its config file and the paths the config names (relative to its folder)."""

    config: Path
    conf: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.config = Path(self.config).resolve()
        try:
            self.conf = json.loads(self.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AsvError(f"cannot read {self.config}: {e}") from e

    @classmethod
    def find(cls, config: str | Path | None = None) -> AsvProject:
        return cls(Path(config) if config else find_config())

    @property
    def root(self) -> Path:
        return self.config.parent

    def _path(self, key: str, default: str) -> Path:
        return (self.root / self.conf.get(key, default)).resolve()

    @property
    def results_dir(self) -> Path:
        return self._path("results_dir", "results")

    @property
    def html_dir(self) -> Path:
        return self._path("html_dir", "html")

    @property
    def benchmark_dir(self) -> Path:
        return self._path("benchmark_dir", "benchmarks")

    @property
    def repo(self) -> Path:
        return self._path("repo", ".")

    @property
    def machine_file(self) -> Path:
        return self.root / ".asv" / "machine.json"

    def head(self) -> str:
        return rev_parse(self.repo, "HEAD")

    def ensure_machine(self, device: str = "auto", name: str | None = None) -> MachineInfo:
        """Detect this machine and write its entry to the project's asv machine file."""
        info = detect(device)
        write_asv_machine_file(self.machine_file, info, name)
        return info

    def _effective_config(self) -> Path:
        """The config asv should read: ours, unless its branches do not exist in this clone.

        asv resolves the configured branches even when it only records ``--set-commit-hash``; a CI
        checkout of a pull request has no local ``main``. Then a copy with absolute paths and
        ``branches: ["HEAD"]`` under ``.asv/`` is used instead.
        """
        branches = self.conf.get("branches") or []
        missing = []
        for b in branches:
            try:
                rev_parse(self.repo, b)
            except GitError:
                missing.append(b)
        if not missing:
            return self.config
        conf = dict(self.conf)
        conf["branches"] = ["HEAD"]
        for key, default in (
            ("repo", "."),
            ("results_dir", "results"),
            ("html_dir", "html"),
            ("benchmark_dir", "benchmarks"),
            ("env_dir", "env"),
        ):
            conf[key] = str(self._path(key, default))
        path = self.root / ".asv" / "asv.conf.effective.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(conf, indent=2) + "\n")
        print(
            f"harness: branch(es) {', '.join(missing)} not in this clone; asv uses {path} (branches: HEAD)",
            file=sys.stderr,
        )
        return path

    def command(self, args: list[str]) -> list[str]:
        """The argv that runs ``asv <args>`` with this project's config and machine file."""
        return [
            sys.executable,
            "-c",
            _ASV_MAIN,
            str(self.machine_file),
            *args,
            "--config",
            str(self._effective_config()),
        ]

    def asv(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        capture: bool = False,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        try:
            import asv  # noqa: F401
        except ImportError:
            raise AsvError("asv is not installed: pip install -e '.[asv]'") from None
        return subprocess.run(
            self.command(args),
            cwd=self.root,
            env=env,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_benchmarks(
        self,
        commit: str,
        machine: str,
        bench: list[str] | None = None,
        quick: bool = True,
        import_root: Path | None = None,
        device: str = "auto",
        capture: bool = False,
        timeout: float | None = None,
        show_stderr: bool = True,
    ) -> subprocess.CompletedProcess:
        """``asv run`` in the existing environment, results saved under ``commit`` for ``machine``.

        ``import_root``: another commit's packages (see :mod:`harness.worktree`), first on the
        benchmark processes' ``sys.path`` (through ``ASV_PYTHONPATH``). asv exits 2 when a benchmark failed (results are saved anyway).
        """
        args = [
            "run",
            "-E",
            f"existing:{sys.executable}",
            "--set-commit-hash",
            commit,
            "-m",
            machine,
            "--launch-method",
            "spawn",
        ]
        if quick:
            args.append("--quick")
        if show_stderr:
            args.append("--show-stderr")
        for b in bench or ():
            args += ["-b", b]
        env = benchmark_env(import_root, device)
        return self.asv(args, env=env, capture=capture, timeout=timeout)

    def discover(
        self, machine: str, import_root: Path | None = None, capture: bool = False
    ) -> subprocess.CompletedProcess:
        """Rewrite ``benchmarks.json`` (asv's ``just-discover``), with a commit's packages if given.

        asv writes the suite it discovered at every run, and the suite is generated from the
        registry of the code it imports; ``publish`` shows only what ``benchmarks.json`` lists. After
        a backfill this makes it the suite of the newest commit measured.
        """
        args = ["run", "-E", f"existing:{sys.executable}", "-m", machine, "--bench", "just-discover"]
        return self.asv(args, env=benchmark_env(import_root), capture=capture)

    def result_files(self, machine: str, commit: str) -> list[Path]:
        length = int(self.conf.get("hash_length", 8))
        folder = self.results_dir / machine
        return sorted(folder.glob(f"{commit[:length]}-*.json")) if folder.exists() else []

    def recorded_commits(self, machine: str) -> list[str]:
        out = []
        folder = self.results_dir / machine
        for p in sorted(folder.glob("*.json")) if folder.exists() else ():
            if p.name == "machine.json":
                continue
            try:
                out.append(json.loads(p.read_text())["commit_hash"])
            except (OSError, ValueError, KeyError):
                continue
        return out

    def publish(self, html_dir: Path | None = None, capture: bool = False) -> subprocess.CompletedProcess:
        args = ["publish"]
        if html_dir is not None:
            args += ["--html-dir", str(Path(html_dir).resolve())]
        return self.asv(args, capture=capture)

    def compare(
        self, rev1: str, rev2: str, machine: str, factor: float = 1.1
    ) -> tuple[list[CompareRow], subprocess.CompletedProcess]:
        args = ["compare", "--factor", str(factor), "--split", "-m", machine, rev1, rev2]
        proc = self.asv(args, capture=True)
        return parse_compare(proc.stdout), proc


def benchmark_env(import_root: Path | None = None, device: str = "auto") -> dict[str, str]:
    """The environment of asv's benchmark processes: device, and another commit's packages first.

    asv's benchmark runner removes PYTHONPATH's entries from ``sys.path`` and puts ASV_PYTHONPATH's
    first instead: the other commit's import root goes there (and a user's PYTHONPATH is kept).
    """
    env = dict(os.environ)
    env[DEVICE_ENV] = device
    paths = [str(import_root)] if import_root is not None else []
    for var in ("ASV_PYTHONPATH", "PYTHONPATH"):
        paths += [p for p in env.get(var, "").split(os.pathsep) if p]
    if paths:
        env["ASV_PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


ASSETS_DIR = Path(__file__).parent / "report_assets"
_TAG = re.compile(r"<(script|link)\b[^>]*?(?:src|href)=\"(https?://[^\"]+)\"[^>]*>", re.IGNORECASE)
_CDN_ONLY_ATTRS = re.compile(r"\s(?:integrity|crossorigin|referrerpolicy)=(\"[^\"]*\"|\S+)", re.IGNORECASE)


def localize_report(html_dir: Path) -> list[str]:
    """Make an asv report self-contained: its CDN scripts and styles replaced by shipped copies.

    asv's index.html loads jQuery, flot, bootstrap and three small plugins from CDNs, so the
    report is blank without internet access (a GPU cluster, CI, a test). The copies in
    ``harness/report_assets`` (see its assets.json: sources, hashes, licences) go to
    ``<html_dir>/assets/`` and the tags point there; SRI attributes are dropped (same-origin files,
    two of them not byte-identical to the CDN's minified builds). Returns the external URLs left
    (none for asv 0.6).
    """
    manifest = json.loads((ASSETS_DIR / "assets.json").read_text())["files"]
    dest = html_dir / "assets"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ASSETS_DIR, dest, ignore=shutil.ignore_patterns("assets.json", "__pycache__"))
    left: list[str] = []
    for page in sorted(html_dir.glob("*.html")):
        text = page.read_text()

        def swap(m: re.Match) -> str:
            url = m.group(2)
            entry = manifest.get(url)
            if entry is None:
                if m.group(1).lower() == "script" or "stylesheet" in m.group(0):
                    left.append(url)
                return m.group(0)
            tag = m.group(0).replace(url, f"assets/{entry['path']}")
            return _CDN_ONLY_ATTRS.sub("", tag)

        new = _TAG.sub(swap, text)
        if new != text:
            page.write_text(new)
    return sorted(set(left))


def prune_unmeasured(html_dir: Path) -> list[str]:
    """Drop benchmarks without any result from the report's index; returns their names.

    asv lists every benchmark of ``benchmarks.json`` on its summary page and fetches a graph for
    each, so a history recorded for a subset (``--bench``) would show empty tiles and 404s for the
    rest. Benchmarks with results have a summary graph file; the others are removed from index.json.
    """
    index_path = html_dir / "index.json"
    index = json.loads(index_path.read_text())
    summary = html_dir / "graphs" / "summary"
    gone = [name for name in index.get("benchmarks", {}) if not (summary / f"{name}.json").exists()]
    if gone:
        for name in gone:
            del index["benchmarks"][name]
        index_path.write_text(json.dumps(index))
    return gone


def last_lines(text: str | None, n: int = 30) -> str:
    lines = (text or "").rstrip().splitlines()
    return "\n".join(lines[-n:])


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


__all__ = [
    "AsvError",
    "AsvProject",
    "CompareRow",
    "GitError",
    "find_config",
    "git",
    "known_config_keys",
    "parse_compare",
]
