"""asv configuration, the generated benchmark suite, machine classes, and asv's traps.

The trap tests run real asv commands on a tiny git repository (a package laid out like this one,
with a ``package-dir`` mapping, and a two-benchmark suite that does not import torch), so they take
seconds: asv's existing environment saves nothing without ``--set-commit-hash``; ``asv continuous``
refuses the existing environment; a machine file with two entries and no ``-m`` fails without a
terminal; asv ignores unknown config keys. The harness's environment is named by the Python
version, not the interpreter's path, and ``harness history compare`` judges asv's samples with the
gate's judge. Tests that run asv point HOME at a temporary folder: asv's machine file lives there.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

asv = pytest.importorskip("asv", reason="asv is not installed (pip install -e '.[asv]')")

from harness import history  # noqa: E402
from harness.asvtools import ENV_TYPE, AsvProject, known_config_keys, save_machine  # noqa: E402
from harness.machine import MachineInfo, cpu_slug, detect, gpu_slug  # noqa: E402
from harness.registry import candidate_names  # noqa: E402
from harness.worktree import build_import_root  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "asv.conf.json"
GIT = [
    "git",
    "-c",
    "user.name=harness-test",
    "-c",
    "user.email=test@example.invalid",
    "-c",
    "commit.gpgsign=false",
]


# -- the config -----------------------------------------------------------------------------------
def test_every_config_key_is_one_asv_knows():
    conf = json.loads(CONFIG.read_text())
    unknown = set(conf) - known_config_keys()
    assert not unknown, f"asv would silently ignore {sorted(unknown)}"


def test_known_keys_reject_a_misspelling():
    # the check above can fail: a plausible typo is not a key asv reads
    assert "result_dir" not in known_config_keys() and "results_dir" in known_config_keys()


def test_config_values():
    conf = json.loads(CONFIG.read_text())
    assert conf["environment_type"] == ENV_TYPE == "existing-portable"
    assert conf["plugins"] == [".benchmarks.asv_environment"]
    assert (ROOT / "benchmarks" / "asv_environment.py").exists()
    assert conf["launch_method"] == "spawn"
    assert conf["results_dir"] == "results/asv"
    assert (ROOT / conf["benchmark_dir"] / "__init__.py").exists()
    assert conf["branches"] == ["main"] and conf["dvcs"] == "git"
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "results/asv/html/" in ignored and ".asv/" in ignored
    assert conf["html_dir"].rstrip("/") + "/" == "results/asv/html/"


def test_asv_extra_pins_the_tested_series():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"asv>=0.6,<0.7"' in text
    assert asv.__version__.startswith("0.6.")


# -- the suite, generated from the registry ---------------------------------------------------------
@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT))
    try:
        mixers = importlib.import_module("benchmarks.bench_mixers")
        quality = importlib.import_module("benchmarks.bench_quality")
        common = importlib.import_module("benchmarks._common")
    finally:
        sys.path.remove(str(ROOT))
    return mixers, quality, common


def test_every_candidate_has_the_throughput_benchmarks(suite):
    mixers, _, common = suite
    by_candidate = {
        cls.candidate: cls
        for cls in vars(mixers).values()
        if isinstance(cls, type) and getattr(cls, "candidate", "")
    }
    assert set(by_candidate) == set(candidate_names())
    for name, cls in by_candidate.items():
        assert not cls.__name__.startswith("_"), name  # asv skips names starting with _
        for method in ("time_forward", "time_forward_backward", "peakmem_forward"):
            assert callable(getattr(cls, method)), (name, method)
        assert cls.version == mixers.VERSION and isinstance(cls.version, str)
        assert cls.params == [[256, 1024]] and cls.param_names == ["T"]
        # asv reads `timer` from the instance: it must stay a plain function, not a bound method
        assert cls().timer is common.synced_timer


def test_quality_benchmarks_are_error_rates_with_a_pinned_version(suite):
    _, quality, _ = suite
    cls = quality.ErrorRate
    assert cls.version == quality.VERSION and isinstance(cls.version, str)
    assert [n for n in vars(cls) if n.startswith("track_")] == ["track_test_error"]
    assert set(cls.params[0]) <= set(candidate_names())


def test_a_generated_benchmark_runs(suite):
    mixers, _, _ = suite
    cls = next(c for c in vars(mixers).values() if getattr(c, "candidate", "") == "softmax")
    bench = cls()
    bench.setup(256)
    bench.time_forward(256)
    bench.time_forward_backward(256)
    bench.peakmem_forward(256)
    assert bench.x_grad.grad is not None and bench.x_grad.grad.shape == (1, 256, 64)


def test_class_names_are_identifiers_and_unique(suite):
    mixers, _, _ = suite
    taken: set[str] = set()
    names = [mixers._class_name(n, taken) for n in ("a-b", "a_b", "3x", "_p")]
    assert names == ["a_b", "a_b_2", "c_3x", "c__p"]
    assert all(n.isidentifier() for n in names)


# -- machine classes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,mem,slug",
    [
        ("NVIDIA H100 80GB HBM3", 85_031_714_816, "h100-sxm-80g"),
        ("NVIDIA H100 PCIe", 85_031_714_816, "h100-pcie-80g"),
        ("NVIDIA H100 NVL", 100_485_038_080, "h100-nvl-94g"),
        ("NVIDIA A100-SXM4-40GB", 42_505_273_344, "a100-sxm-40g"),
        ("NVIDIA A100 80GB PCIe", 85_198_045_184, "a100-pcie-80g"),
        ("NVIDIA H200", 150_754_820_096, "h200-141g"),
        ("NVIDIA GeForce RTX 4090", 25_393_692_672, "rtx-4090-24g"),
        ("Tesla T4", 15_835_660_288, "t4-16g"),
    ],
)
def test_gpu_slugs(name, mem, slug):
    assert gpu_slug(name, mem) == slug


@pytest.mark.parametrize(
    "model,slug",
    [
        ("AMD EPYC", "amd-epyc"),
        ("AMD EPYC 7763 64-Core Processor", "amd-epyc-7763"),
        ("Intel(R) Xeon(R) Platinum 8488C", "intel-xeon-platinum-8488c"),
        ("Intel(R) Xeon(R) CPU @ 2.20GHz", "intel-xeon"),
        ("Apple M2 Pro", "apple-m2-pro"),
    ],
)
def test_cpu_slugs(model, slug):
    assert cpu_slug(model) == slug


def test_detected_cpu_class_names_model_and_cores():
    info = detect("cpu")
    assert info.name == f"cpu-{cpu_slug(info.cpu)}-{info.cores}c"
    entry = info.asv_entry()
    assert entry["machine"] == info.name and entry["num_cpu"] == str(info.cores)
    assert "torch" not in json.dumps(entry)  # software versions live in the records, not the class


@pytest.fixture
def asv_home(tmp_path, monkeypatch):
    """asv's machine file (``~/.asv-machine.json``) in a temporary home, not the user's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_machine_file_is_asvs_and_keeps_other_entries(asv_home):
    a = MachineInfo("cpu-a-2c", "cpu", "A", 2, "x86_64", "Linux", 8)
    b = MachineInfo("h100-sxm-80g", "cuda", "B", 16, "x86_64", "Linux", 128, "NVIDIA H100 80GB HBM3", 85e9, 1)
    assert save_machine(a) == asv_home / ".asv-machine.json"
    save_machine(b)
    data = json.loads((asv_home / ".asv-machine.json").read_text())
    assert set(data) == {"cpu-a-2c", "h100-sxm-80g", "version"}
    assert data["h100-sxm-80g"]["gpu"].startswith("NVIDIA H100 80GB HBM3")
    assert data["cpu-a-2c"]["num_cpu"] == "2"


# -- a tiny project: asv's traps, for real ----------------------------------------------------------------
TINY_BENCH = '''\
"""A tiny suite: values from the package under test, so each commit's code is visible."""
import tinypkg.sub


class Suite:
    version = "1"
    params = [[10, 20]]
    param_names = ["n"]

    def track_value(self, n):
        return tinypkg.sub.VALUE * n

    track_value.unit = "units"

    def time_sum(self, n):
        sum(range(1000 * n * tinypkg.sub.VALUE))
'''


def _git(root: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def make_tiny_project(root: Path, values=(1, 3)) -> list[str]:
    """A git repo (branch main) with one commit per value of ``tinypkg.sub.VALUE``; returns the shas."""
    root.mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    conf = json.loads(CONFIG.read_text())
    conf["project"] = "tiny"
    (root / "asv.conf.json").write_text(json.dumps(conf, indent=2))
    (root / "pyproject.toml").write_text(
        '[project]\nname = "tinypkg"\nversion = "0"\n\n[tool.setuptools]\n'
        'package-dir = { "tinypkg" = "tinypkg", "tinypkg.sub" = "sub" }\n'
    )
    (root / "tinypkg").mkdir()
    (root / "tinypkg" / "__init__.py").write_text("")
    (root / "sub").mkdir()
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "bench_tiny.py").write_text(TINY_BENCH)
    plugin = ROOT / "benchmarks" / "asv_environment.py"  # the config names it
    (root / "benchmarks" / plugin.name).write_text(plugin.read_text())
    (root / ".gitignore").write_text(".asv/\nresults/asv/html/\n")
    shas = []
    for v in values:
        (root / "sub" / "__init__.py").write_text(f"VALUE = {v}\n")
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", f"value {v}")
        shas.append(_git(root, "rev-parse", "HEAD"))
    return shas


def tracked_values(project: AsvProject, machine: str, sha: str) -> list[float]:
    (path,) = project.result_files(machine, sha)
    return json.loads(path.read_text())["results"]["bench_tiny.Suite.track_value"][0]


@pytest.fixture
def tiny(tmp_path, monkeypatch, asv_home):
    root = tmp_path / "tiny"
    shas = make_tiny_project(root)
    # "installed": the package importable as after `pip install -e .` (asv's benchmark runner drops
    # PYTHONPATH from sys.path; ASV_PYTHONPATH is its way in)
    monkeypatch.setenv("ASV_PYTHONPATH", str(build_import_root(root, tmp_path / "installed")))
    project = AsvProject(root / "asv.conf.json")
    machine = project.ensure_machine("cpu").name
    return project, machine, shas


def test_existing_environment_saves_nothing_without_set_commit_hash(tiny):
    project, machine, shas = tiny
    bare = project.asv(["run", "-E", f"existing:{sys.executable}", "-m", machine, "--quick"], capture=True)
    assert bare.returncode == 0, bare.stdout + bare.stderr
    assert project.result_files(machine, shas[-1]) == []  # the trap: ran, saved nothing
    proc = project.run_benchmarks(shas[-1], machine, quick=True, capture=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tracked_values(project, machine, shas[-1]) == [30, 60]
    # named by the Python version, not the interpreter's path: every clone and runner joins one series
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (path,) = project.result_files(machine, shas[-1])
    data = json.loads(path.read_text())
    assert path.name == f"{shas[-1][:8]}-existing-py{version}.json"
    assert data["env_name"] == f"existing-py{version}" and data["params"]["python"] == version


def test_two_machine_entries_need_m(tiny):
    project, machine, shas = tiny
    other = MachineInfo("cpu-other-64c", "cpu", "Other", 64, "x86_64", "Linux", 256)
    save_machine(other)
    args = ["run", "-E", f"existing:{sys.executable}", "--set-commit-hash", shas[-1], "--quick"]
    without_m = project.asv(args, capture=True)
    assert without_m.returncode != 0  # the trap: asv wants to ask questions, and there is no terminal
    assert project.result_files(machine, shas[-1]) == []
    with_m = project.asv([*args, "-m", machine], capture=True)
    assert with_m.returncode == 0, with_m.stdout + with_m.stderr
    assert project.result_files(machine, shas[-1])
    assert (
        json.loads((project.results_dir / machine / "machine.json").read_text())["cpu"] == detect("cpu").cpu
    )


def test_continuous_refuses_the_existing_environment(tiny):
    project, machine, shas = tiny
    proc = project.asv(
        ["continuous", "-E", f"existing:{sys.executable}", "-m", machine, shas[0], shas[1]], capture=True
    )
    assert proc.returncode != 0
    assert "existing" in (proc.stdout + proc.stderr).lower()


@pytest.mark.slow
def test_backfill_measures_each_commits_own_code_and_compare_gates(tiny, capsys):
    project, machine, shas = tiny
    cfg = str(project.config)
    rc = history.main(["history", "backfill", shas[0], "--config", cfg, "--device", "cpu"])
    assert rc == 0
    rc = history.main(["history", "backfill", f"{shas[0]}..{shas[1]}", "--config", cfg, "--device", "cpu"])
    assert rc == 0
    assert tracked_values(project, machine, shas[0]) == [10, 20]  # VALUE = 1 at the first commit
    assert tracked_values(project, machine, shas[1]) == [30, 60]  # VALUE = 3 at the second
    capsys.readouterr()
    # skip-existing leaves recorded commits alone
    rc = history.main(
        ["history", "backfill", f"{shas[0]}^!", "--config", cfg, "--device", "cpu", "--skip-existing"]
    )
    assert rc == 0 and "skipped" in capsys.readouterr().out

    # asv's statistics are kept: several samples a result, with their interval
    (path,) = project.result_files(machine, shas[1])
    data = json.loads(path.read_text())
    columns = data["result_columns"]
    time_sum = dict(zip(columns, data["results"]["bench_tiny.Suite.time_sum"]))
    assert all(len(s) >= 5 for s in time_sum["samples"]), time_sum["samples"]
    assert all(a > float("-inf") for a in time_sum["stats_ci_99_a"])

    # the gate's judge on asv's results: the tripled value and the tripled time are regressions
    verdicts = {v.key: v for v in history.compare_commits(project, shas[0], shas[1], machine)}
    assert verdicts["bench_tiny.Suite.track_value(10)"].status == "worse"
    slower = verdicts["bench_tiny.Suite.time_sum(20)"]
    assert slower.status == "slower" and slower.p_value < 0.01, slower
    assert history.main(["history", "compare", shas[0], shas[1], "--config", cfg, "--machine", machine]) == 1
    assert history.main(["history", "compare", shas[1], shas[1], "--config", cfg, "--machine", machine]) == 0


def test_record_refuses_a_dirty_tree_and_works_without_a_main_branch(tiny, capsys):
    project, machine, shas = tiny
    cfg = str(project.config)
    (project.root / "sub" / "__init__.py").write_text("VALUE = 5\n")
    assert history.main(["history", "record", "--config", cfg, "--device", "cpu"]) == 2
    assert "uncommitted changes" in capsys.readouterr().err
    _git(project.root, "checkout", "-q", "--", "sub")
    _git(project.root, "checkout", "-q", "--detach")
    _git(project.root, "branch", "-q", "-m", "main", "elsewhere")  # like a CI checkout of a pull request
    assert history.main(["history", "record", "--config", cfg, "--device", "cpu"]) == 0
    assert "branches: HEAD" in capsys.readouterr().err
    assert tracked_values(project, machine, shas[-1]) == [30, 60]


def test_import_root_mirrors_package_dir(tmp_path):
    root = tmp_path / "tiny"
    make_tiny_project(root, values=(7,))
    imp = build_import_root(root, tmp_path / "imp")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tinypkg.sub, os; print(tinypkg.sub.VALUE, os.path.realpath(tinypkg.sub.__file__))",
        ],
        env={**os.environ, "PYTHONPATH": str(imp)},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert out[0] == "7" and out[1] == str((root / "sub" / "__init__.py").resolve())
    # this repository's layout: harness.candidates comes from candidates/
    imp = build_import_root(ROOT, tmp_path / "imp2")
    assert (imp / "harness" / "candidates").resolve() == (ROOT / "candidates").resolve()
    assert (imp / "harness" / "registry.py").resolve() == (ROOT / "harness" / "registry.py").resolve()


# -- the published report ---------------------------------------------------------------------------
def test_shipped_report_assets_cover_asv_and_match_their_hashes(tmp_path):
    import hashlib

    from harness.asvtools import ASSETS_DIR, localize_report

    manifest = json.loads((ASSETS_DIR / "assets.json").read_text())["files"]
    for url, entry in manifest.items():
        data = (ASSETS_DIR / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], url
    template = Path(asv.__file__).parent / "www" / "index.html"
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text(template.read_text())
    assert localize_report(html) == []  # every script and stylesheet of asv's page is shipped
    text = (html / "index.html").read_text()
    assert "integrity=" not in text and "https://cdn" not in text
    for entry in manifest.values():
        assert f'"assets/{entry["path"]}"' in text and (html / "assets" / entry["path"]).exists()


def test_prune_unmeasured_drops_benchmarks_without_graphs(tmp_path):
    from harness.asvtools import prune_unmeasured

    (tmp_path / "graphs" / "summary").mkdir(parents=True)
    (tmp_path / "graphs" / "summary" / "m.a.time_x.json").write_text("[]")
    index = {"benchmarks": {"m.a.time_x": {}, "m.b.time_x": {}}, "pages": []}
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert prune_unmeasured(tmp_path) == ["m.b.time_x"]
    assert list(json.loads((tmp_path / "index.json").read_text())["benchmarks"]) == ["m.a.time_x"]
