"""The documentation: the site builds strictly, benchmark tables come from the result files,
and the README stays a one-screen start.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from the nav, and
(through the hook ``docs/hooks/bench_tables.py``) on an unknown ``<!-- bench-table: NAME -->``
placeholder or a missing ``bench/results`` file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HOOK = ROOT / "docs" / "hooks" / "bench_tables.py"


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lethe_docs_bench_tables", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_tables = load_hook()


def test_mkdocs_build_is_strict_and_clean(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    assert mkdocs.exists(), f"{mkdocs} missing: the test extra installs mkdocs-material"
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    leftovers = [str(p.relative_to(site)) for p in pages if "<!-- bench-table" in p.read_text()]
    assert not leftovers, f"placeholders left unrendered in {leftovers}"
    speedup = (site / "benchmarks" / "speedup" / "index.html").read_text()
    assert "bench/results/speedup.json" in speedup and "bench/results/gpu/speedup.json" in speedup
    # the plots come from bench/results at build time; the screenshots stay in docs/images
    assert (site / "bench-results" / "speedup.png").is_file()
    assert (site / "bench-results" / "gpu" / "speedup.png").is_file()
    assert (site / "images" / "dashboard.png").is_file()
    assert not (site / "hooks").exists(), "the hook's source must not be published"


def test_speedup_table_renders_the_figures_of_the_result_file() -> None:
    data = json.loads((RESULTS / "speedup.json").read_text())
    md = bench_tables.render("speedup", data)
    by = {m["method"]: m for m in data["methods"]}
    for method in ("retrain", "amnesiac", "partial-amnesiac", "sisa"):
        row = next(line for line in md.splitlines() if line.startswith(f"| `{method}`"))
        assert bench_tables.ratio(by[method]["speedup_vs_retrain"]) in row, row
        assert bench_tables.acc(by[method]["test_acc"]) in row, row
    # a figure as the file has it, formatted independently of the module's helpers
    assert f"{by['amnesiac']['speedup_vs_retrain']:.0f}x" in md
    # provenance: the file, and each DESIGN.md field either shown or said to be missing
    assert "`bench/results/speedup.json`" in md
    for field in bench_tables.PROVENANCE:
        assert f"`{field}`" in md or f"{field}: " in md, field


def test_unknown_placeholder_and_missing_result_file_raise(tmp_path: Path) -> None:
    with pytest.raises(bench_tables.BenchTableError, match="no_such_bench"):
        bench_tables.replace_placeholders("# page\n\n<!-- bench-table: no_such_bench -->\n")
    with pytest.raises(bench_tables.BenchTableError, match="unknown bench table"):
        bench_tables.render("no_such_bench", {})
    with pytest.raises(bench_tables.BenchTableError, match="missing"):
        bench_tables.replace_placeholders("<!-- bench-table: speedup -->", results_dir=tmp_path)
    # a mention inside a sentence is prose, not a placeholder
    prose = "Write `<!-- bench-table: NAME -->` on a line of its own."
    assert bench_tables.replace_placeholders(prose) == prose


def test_every_result_file_has_a_table_on_some_page() -> None:
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    placed = {m.group("name") for m in bench_tables.PLACEHOLDER.finditer(pages)}
    results = {p.relative_to(RESULTS).with_suffix("").as_posix() for p in RESULTS.rglob("*.json")}
    assert results, "no bench/results/*.json"
    assert results <= placed, f"result files without a table in docs/: {sorted(results - placed)}"
    for name in sorted(results):  # and each of them renders
        assert bench_tables.render(name, bench_tables.load(name)).strip()
    assert bench_tables.render("headlines", bench_tables.load("headlines")).strip()


def test_readme_is_short_and_has_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make run" in readme and "make test" in readme
