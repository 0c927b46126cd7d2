"""Running asv the way the harness needs it, with asv's own options and API, around its known traps.

- The benchmarks run in an ``existing`` environment (the current interpreter, with torch already
  installed): asv then saves nothing unless ``--set-commit-hash`` is given, so every run passes it.
  asv names an existing environment after the interpreter's path, which would give every clone,
  virtualenv and CI runner a series of its own; the environment type ``existing-portable`` (an asv
  plug-in, ``benchmarks/asv_environment.py``, named in asv.conf.json's ``plugins``) is asv's
  ``existing`` named by the Python version instead (``existing-py3.11``).
- Runs keep asv's statistics: its own sampling (no ``--quick``, whose single sample has an unbounded
  interval) and the raw samples (``--record-samples``), which ``harness history compare`` judges with
  the gate's judge (:mod:`harness.gate.verdicts`). It reads the results through asv's API
  (``asv.results``), not the table of ``asv compare`` (which exits 0 even when something got worse).
- ``asv continuous`` refuses the existing environment.
- asv reads machine entries from its machine file (``~/.asv-machine.json``) and, with two entries
  there and no ``-m``, stops to ask questions (or fails without a terminal). The harness writes the
  detected machine class there with asv's API (:func:`save_machine`) and always passes
  ``-m <machine class>``.
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
from harness.errors import CommandFailed
from harness.machine import MachineInfo, detect
from harness.worktree import GitError, git, rev_parse

CONFIG_NAME = "asv.conf.json"
DEVICE_ENV = "HARNESS_ASV_DEVICE"  # the benchmarks' device: auto (CUDA when available), cpu, cuda

ENV_TYPE = "existing-portable"  # the plug-in's environment type (benchmarks/asv_environment.py)


class AsvError(CommandFailed, RuntimeError):
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

    def head(self) -> str:
        return rev_parse(self.repo, "HEAD")

    def ensure_machine(self, device: str = "auto", name: str | None = None) -> MachineInfo:
        """Detect this machine and write its entry to asv's machine file."""
        info = detect(device)
        save_machine(info, name)
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
        """The argv that runs ``asv <args>`` with this project's config."""
        return [sys.executable, "-m", "asv", *args, "--config", str(self._effective_config())]

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
        quick: bool = False,
        import_root: Path | None = None,
        device: str = "auto",
        capture: bool = False,
        timeout: float | None = None,
        show_stderr: bool = True,
    ) -> subprocess.CompletedProcess:
        """``asv run`` in this interpreter's environment, results saved under ``commit`` for
        ``machine``, with asv's sampling and the raw samples (``quick``: one sample each, a smoke check
        whose results are not fit for the history).

        ``import_root``: another commit's packages (see :mod:`harness.worktree`), first on the
        benchmark processes' ``sys.path`` (through ``ASV_PYTHONPATH``). asv exits 2 when a benchmark
        failed (results are saved anyway).
        """
        args = [
            "run",
            "-E",
            f"{ENV_TYPE}:{sys.executable}",
            "--set-commit-hash",
            commit,
            "-m",
            machine,
            "--launch-method",
            "spawn",
            "--record-samples",
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
        args = ["run", "-E", f"{ENV_TYPE}:{sys.executable}", "-m", machine, "--bench", "just-discover"]
        return self.asv(args, env=benchmark_env(import_root), capture=capture)

    def result_files(self, machine: str, commit: str) -> list[Path]:
        length = int(self.conf.get("hash_length", 8))
        folder = self.results_dir / machine
        return sorted(folder.glob(f"{commit[:length]}-*.json")) if folder.exists() else []

    def publish(self, html_dir: Path | None = None, capture: bool = False) -> subprocess.CompletedProcess:
        args = ["publish"]
        if html_dir is not None:
            args += ["--html-dir", str(Path(html_dir).resolve())]
        return self.asv(args, capture=capture)

    def readings(self, machine: str, commit: str) -> dict[str, Reading]:
        """Every result of ``commit`` on ``machine``, through asv's API, one ``Reading`` per benchmark
        and parameter combination (named as ``asv compare`` names them)."""
        from asv.benchmarks import Benchmarks
        from asv.commands.compare import unroll_result
        from asv.config import Config
        from asv.results import iter_results_for_machine_and_hash
        from asv.util import UserError

        conf = Config.load(str(self.config))
        conf.results_dir = str(self.results_dir)
        try:
            described = Benchmarks.load(conf)
        except UserError:  # no benchmarks.json: the kinds come from the names alone
            described = {}
        out: dict[str, Reading] = {}
        for result in iter_results_for_machine_and_hash(str(self.results_dir), machine, commit):
            for key in result.get_all_result_keys():
                params = result.get_result_params(key)
                unrolled = unroll_result(
                    key,
                    params,
                    result.get_result_value(key, params),
                    result.get_result_stats(key, params),
                    result.get_result_samples(key, params),
                )
                meta = described.get(key, {})
                for name, value, _stats, samples in unrolled:
                    out[name] = Reading.of(name, key, meta, value, samples)
        return out


@dataclass
class Reading:
    """One benchmark result of one commit, as the judge (:mod:`harness.gate.verdicts`) takes it."""

    name: str
    kind: str  # speed (time_: samples), quality (track_ error rates), value (peakmem_, other track_)
    values: list[float]  # the samples (speed), else the one value; empty when it failed or was skipped
    higher_is_better: bool = False
    error: str | None = None

    @classmethod
    def of(cls, name: str, key: str, meta: dict[str, Any], value, samples) -> Reading:
        from harness.gate.verdicts import QUALITY, SPEED, VALUE

        kind_of = meta.get("type") or key.rpartition(".")[2].split("_")[0]
        if kind_of == "time":
            kind = SPEED
        elif kind_of == "track" and meta.get("unit") == "error rate":
            kind = QUALITY
        else:
            kind = VALUE
        if value is None:  # asv: the benchmark failed
            return cls(name, kind, [], error="failed")
        if value != value:  # NaN: skipped (e.g. needs CUDA, or absent at this commit)
            return cls(name, kind, [])
        values = [float(v) for v in samples] if kind == SPEED and samples else [float(value)]
        return cls(name, kind, values)


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


def save_machine(info: MachineInfo, name: str | None = None) -> Path:
    """Add (or replace) this machine's entry in asv's machine file with asv's API (other entries are
    kept: with several, asv needs ``-m NAME``, which the harness always passes). Returns the file."""
    try:
        from asv.machine import MachineCollection
    except ImportError:
        raise AsvError("asv is not installed: pip install -e '.[asv]'") from None
    entry = info.asv_entry()
    if name:
        entry["machine"] = name
    MachineCollection.save(entry["machine"], entry)
    return Path(MachineCollection.get_machine_file_path())


__all__ = [
    "AsvError",
    "AsvProject",
    "GitError",
    "Reading",
    "find_config",
    "git",
    "known_config_keys",
    "save_machine",
]
