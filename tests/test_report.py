"""``harness report``: the static site from stored records, opened in headless Chromium.

A small stored sweep (synthetic records in the exact shape training and the benchmarks write:
softmax, diagonal and deltanet swept over d_state, a candidate named like an HTML injection, MQAR
and parity, 3 seeds, throughput and numerics rows) is built into a report; each page is loaded from
``file://`` in Chromium through Playwright: no console message, no request other than the site's
own files, every figure present and drawn, the injected name shown as text. A second test builds
the same from real smoke-tier runs (``compare --sweep``, ``bench throughput``, ``bench numerics``)
and parses every JSON file written strictly (a bare NaN is an error).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.registry import get_candidate, get_task
from harness.report import data as rd
from harness.report.site import build_report
from harness.results import RecordStore, run_id_for

XSS = "<img src=x onerror=alert(1)>"
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)

# mqar mean accuracy per (family, d_state): deltanet first reaches 0.9 at d_state=8, diagonal never
MQAR = {
    ("diagonal", 4): 0.30,
    ("diagonal", 8): 0.55,
    ("diagonal", 16): 0.80,
    ("deltanet", 4): 0.60,
    ("deltanet", 8): 0.93,
    ("deltanet", 16): 0.99,
}


def strict_load(path: Path):
    def refuse(name: str):
        raise ValueError(f"{path}: bare {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _train(store, cand, task, seed, score, state_bytes, grows=False, lengths=None):
    config = get_task(task).cls.from_tier("smoke").config_dict()
    identity = {"candidate": cand, "task": task, "seed": seed, "task_config": config, "synthetic": True}
    rec = {
        "kind": "train",
        "run_id": run_id_for(identity),
        "identity": identity,
        "candidate": cand,
        "task": task,
        "tier": "smoke",
        "seed": seed,
        "lr": 3e-3,
        "status": "ok",
        "params_mixer": 4096,
        "state": {
            "state_bytes": state_bytes,
            "state_bytes_initial": 0 if grows else state_bytes,
            "seq_len": 32,
        },
        "steps_done": 8,
        "steps_to_solve": 8 if score >= 0.99 else None,
        "valid": {"token_acc": score, "seq_acc": score},
        "valid_score": score,
        "test": {"token_acc": score, "seq_acc": score},
        "test_lengths": lengths or {},
        "environment": {
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
            "torch": "2.13.0+cpu",
            "device": "cpu",
            "device_name": "Test CPU",
            "cpu_model": "Test CPU",
            "cpu_count": 2,
        },
        "finished": f"2026-01-0{seed + 1}T00:00:00+0000",
    }
    store.save(rec)


def _bench(store, kind, cand, ident_extra, result):
    identity = {
        "candidate": cand,
        "method_version": rd_versions()[kind],
        "source_hash": get_candidate(cand).source_hash(),
        "device": "cpu",
        "device_name": "Test CPU",
        "threads": 1,
        **ident_extra,
    }
    store.save(
        {
            "kind": kind,
            "run_id": run_id_for(identity),
            "identity": identity,
            "result": {"status": "ok", **result},
            "created": "2026-01-01T00:00:00+0000",
        }
    )


def rd_versions():
    from harness.bench.numerics import METHOD_VERSION as N
    from harness.bench.throughput import METHOD_VERSION as T

    return {"throughput": T, "numerics": N}


def make_sweep_store(root: Path) -> list[str]:
    """A stored d_state sweep: training, throughput and numerics records. Returns the candidates."""
    store = RecordStore(root)
    cands = {"softmax": (8192, True, 1.0)}
    for (fam, d), acc in MQAR.items():
        cands[f"{fam}[d_state={d}]"] = (fam == "deltanet" and d * 256 or d * 128, False, acc)
    cands[XSS] = (2048, False, 0.5)
    for i, (cand, (nbytes, grows, acc)) in enumerate(cands.items()):
        for seed in range(3):
            jitter = (seed - 1) * 0.01
            _train(store, cand, "mqar", seed, min(1.0, acc + jitter), nbytes, grows)
            lengths = {
                str(L): {
                    "token_acc": 0.9,
                    "seq_acc": 0.5,
                    "beyond_token_acc": max(0.0, 0.9 - 0.05 * i - k * 0.1),
                }
                for k, L in enumerate((16, 32))
            }
            _train(store, cand, "parity", seed, 0.9 - 0.02 * i + jitter, nbytes, grows, lengths)
        if cand == XSS:
            continue  # no benchmark records: the page says which command makes them
        speed = 8.0 if cand == "softmax" else 1.0 + i  # time per call: softmax the slowest
        for p, impl in (("fwd", "parallel"), ("fwd_bwd", "parallel"), ("step", "step")):
            for T in (256, 1024, 4096):
                t = 1e-4 * speed * (T / 256) ** (0.0 if p == "step" else 1.0 + 0.3 * (cand == "softmax"))
                _bench(
                    store,
                    "throughput",
                    cand,
                    {"pass": p, "impl": impl, "dtype": "float32", "batch": 1, "d_model": 64, "seq_len": T},
                    {
                        "median_s": t,
                        "p20_s": 0.9 * t,
                        "p80_s": 1.1 * t,
                        "tokens_per_s": (1 if p == "step" else T) / t,
                    },
                )
        for dtype, err in (("float32", 1e-7), ("bfloat16", 3e-3 * speed), ("float16", 4e-4)):
            finite = not (cand == "deltanet[d_state=16]" and dtype == "float16")
            _bench(
                store,
                "numerics",
                cand,
                {
                    "check": "error",
                    "impl": "parallel",
                    "dtype": dtype,
                    "seq_len": 1024,
                    "batch": 2,
                    "d_model": 64,
                },
                {"out_rms": err if finite else float("nan"), "finite": finite},
            )
    return list(cands)


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_sweep_store(root)
    report = build_report(root, root / "site", tier="smoke", all_versions=True)
    return root, report


def test_report_pages_figures_and_summary(sweep_report):
    root, report = sweep_report
    site = root / "site"
    by_name = {p.name: p for p in report.pages}
    assert set(by_name) == {"transitions", rd.OTHER_GROUP}  # not readout, which only lists deltanet too
    tr = by_name["transitions"]
    keys = [f.key for f in tr.figures]
    assert keys == ["quality-speed", "extrapolation-parity", "recall-state", "scaling", "numerics"]
    for f in tr.figures:
        assert f.svg.stat().st_size > 5000 and f.png.stat().st_size > 5000
        assert f.svg.read_text().lstrip().startswith("<?xml")
    # Zoology's figure: the smallest state reaching 0.9 per family; softmax's KV cache flagged
    smallest = tr.summary["smallest_state"]
    assert (
        smallest["deltanet"]["candidate"] == "deltanet[d_state=8]"
        and smallest["deltanet"]["state_bytes"] == 2048
    )
    assert smallest["diagonal"] is None
    assert smallest["softmax"]["grows_with_T"] is True
    # the frontier: the fastest candidate, and the best one
    # the frontier, slowest first: softmax (best and slowest) down to the fastest diagonal
    assert tr.summary["frontier"] == [
        "softmax",
        "deltanet[d_state=16]",
        "deltanet[d_state=8]",
        "diagonal[d_state=16]",
        "diagonal[d_state=8]",
        "diagonal[d_state=4]",
    ]  # deltanet[d_state=4] is slower and worse than diagonal[d_state=16]
    page = (site / tr.page).read_text()
    assert "Provenance" in page and "0123456789" in page and "cpu-test-2c" in page
    assert "none reaches 0.9" in page and "grows linearly with T" in page
    # the injected name's page says what to run for its missing benchmarks, escaped
    other = (site / by_name[rd.OTHER_GROUP].page).read_text()
    assert XSS not in other and "&lt;img src=x onerror=alert(1)&gt;" in other
    assert "harness bench throughput --candidates" in other
    # every JSON written is strict and the leaderboard matches its schema
    manifest = strict_load(site / "report.json")
    assert (
        manifest["groups"]["transitions"]["figures"]["recall-state"]["svg"]
        == "figures/transitions/recall-state.svg"
    )
    rows = strict_load(site / "data" / "transitions-leaderboard.json")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rows, strict_load(site / "data" / "leaderboard.schema.json"))
    # nothing in the site points outside it
    for html_file in site.glob("*.html"):
        text = html_file.read_text()
        assert "http://" not in text and "https://" not in text and "<script" not in text


def test_report_cli_and_missing_records(tmp_path, capsys):
    assert main(["report", "--tier", "smoke", "--results-dir", str(tmp_path)]) == 2
    assert "no stored smoke training records" in capsys.readouterr().err
    make_sweep_store(tmp_path)
    (tmp_path / "asv" / "html").mkdir(parents=True)
    (tmp_path / "asv" / "html" / "index.html").write_text("<html></html>")  # a published history
    rc = main(
        [
            "report",
            "--tier",
            "smoke",
            "--results-dir",
            str(tmp_path),
            "--group",
            "transitions",
            "--all-versions",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "transitions: 7 candidates" in out and "deltanet: 2048 B (deltanet[d_state=8])" in out
    assert (tmp_path / "report" / "index.html").exists() and "report written to" in err
    assert 'href="../asv/html/index.html"' in (tmp_path / "report" / "group-transitions.html").read_text()
    # a rebuild replaces the earlier report; a folder holding something else is refused
    assert main(["report", "--tier", "smoke", "--results-dir", str(tmp_path), "--all-versions"]) == 0
    assert (
        main(
            [
                "report",
                "--tier",
                "smoke",
                "--results-dir",
                str(tmp_path),
                "--output",
                str(tmp_path / "asv"),
                "--all-versions",
            ]
        )
        == 2
    )
    assert "not empty" in capsys.readouterr().err
    assert main(["report", "--tier", "smoke", "--results-dir", str(tmp_path), "--group", "nope"]) == 2


def _browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    if CHROMIUM is None:
        pytest.skip("no headless Chromium here (Debian: apt-get install chromium)")
    return sync_api


def _open(browser, path: Path):
    """Load ``path`` in a new page, recording console messages, page errors, requests and dialogs."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, console, requests, dialogs


def test_report_opens_offline_in_chromium(sweep_report, tmp_path):
    sync_api = _browser()
    root, report = sweep_report
    site = root / "site"
    pages = [site / "index.html", *(site / p.page for p in report.pages)]
    shots = Path(os.environ.get("REPORT_SCREENSHOTS", tmp_path))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for path in pages:
                page, console, requests, dialogs = _open(browser, path)
                assert console == [] and dialogs == [], (path.name, console, dialogs)
                outside = [u for u in requests if not u.startswith(site.as_uri() + "/")]
                assert outside == [], (path.name, outside)
                images = page.evaluate(
                    "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
                )
                if path.name != "index.html":
                    figures = next(p for p in report.pages if p.page == path.name).figures
                    assert len(images) == len(figures) >= 1, (path.name, images)
                    assert all(done and width > 100 for _, done, width in images), images
                    assert page.locator("table").count() >= 3  # leaderboard, details, provenance
                page.screenshot(path=str(shots / f"report-{path.stem}.png"), full_page=True)
                page.close()
            other = next(p for p in report.pages if p.name == rd.OTHER_GROUP)
            page, console, _, dialogs = _open(browser, site / other.page)
            assert XSS in page.inner_text("body")  # shown as text ...
            assert page.locator('img[src="x"]').count() == 0  # ... never as an element
            assert console == [] and dialogs == []
            page.close()
        finally:
            browser.close()
    assert (shots / "report-group-transitions.png").stat().st_size > 50_000


def test_real_smoke_sweep_bench_and_report_write_strict_json(tmp_path, capsys):
    """End to end on real runs: every JSON file compare, bench and report write parses strictly."""
    store = str(tmp_path / "store")
    sel = ["--candidates", "softmax,diagonal,deltanet", "--baselines", "", "--tier", "smoke"]
    rc = main(
        [
            "compare",
            *sel,
            "--tasks",
            "mqar",
            "--sweep",
            "d_state=4,8",
            "--results-dir",
            store,
            "--quiet",
            "--jobs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "softmax has no hyperparameter 'd_state'" in err and "report: `harness report" in err
    names = "softmax,diagonal[d_state=4],deltanet[d_state=8]"
    common = ["--candidates", names, "--results-dir", store, "--quiet"]
    assert (
        main(
            ["bench", "throughput", *common, "--seq-lens", "32,64", "--rounds", "1", "--min-run-time", "0.01"]
        )
        == 0
    )
    assert (
        main(
            [
                "bench",
                "numerics",
                *common,
                "--seq-lens",
                "16",
                "--stability-len",
                "0",
                "--format",
                "json",
                "--output",
                str(tmp_path / "numerics.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "leaderboard",
                *sel,
                "--tasks",
                "mqar",
                "--sweep",
                "d_state=4,8",
                "--results-dir",
                store,
                "--format",
                "json",
                "--output",
                str(tmp_path / "board.json"),
            ]
        )
        == 0
    )
    assert main(["report", "--tier", "smoke", "--results-dir", store]) == 0
    out = capsys.readouterr().out
    assert "smallest state reaching 0.9 on mqar" in out
    files = sorted(Path(tmp_path).rglob("*.json"))
    assert len(files) > 30
    for f in files:
        strict_load(f)
    train = [strict_load(f) for f in (tmp_path / "store" / "runs" / "train").glob("*.json")]
    assert sorted({r["candidate"] for r in train}) == [
        "deltanet[d_state=4]",
        "deltanet[d_state=8]",
        "diagonal[d_state=4]",
        "diagonal[d_state=8]",
        "softmax",
    ]
    site = tmp_path / "store" / "report"
    manifest = strict_load(site / "report.json")
    figs = manifest["groups"]["transitions"]["figures"]
    assert {"quality-speed", "recall-state", "scaling", "numerics"} <= set(figs)
