"""Benchmark records anyone can trust (#17, part 5): what each result file records about the
machine and the code that made it, and the check that marks a result stale once that code
changes (``python bench/provenance.py --check``, run by ``make test``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch  # noqa: F401 - imported, so that the record names its version

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prov = _load(ROOT / "bench" / "provenance.py", "lethe_bench_provenance_test")


def test_a_stamped_result_records_the_machine_the_load_and_the_code_it_ran() -> None:
    import unlearning_core.pipeline  # noqa: F401 - a library module this "bench" ran

    result = prov.stamped({"benchmark": "x", "load_average_end": "the bench's own value loses"})
    for key in ("commit", "time", "host", "cpu", "gpu", "torch", "load_average_start", "load_average_end",
                "command", "code"):
        assert result.get(key) not in (None, ""), key
    assert result["torch"] == torch.__version__ and result["gpu"] in ("none", *([] if not torch.cuda.is_available()
                                                                                 else [result["gpu"]]))
    assert isinstance(result["load_average_end"], list) and len(result["load_average_start"]) == 3
    code = result["code"]
    assert "unlearning_core/pipeline.py" in code and "bench/provenance.py" not in code  # stamping computes nothing
    digest = hashlib.sha256((ROOT / "unlearning_core" / "pipeline.py").read_bytes()).hexdigest()
    assert code["unlearning_core/pipeline.py"] == digest
    assert not any(k.startswith((".venv", "tests/")) for k in code)  # only the checkout's own code


def test_a_result_turns_stale_when_a_file_it_ran_changes_or_goes(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    script = tmp_path / "bench" / "b.py"
    script.write_text("x = 1\n")
    data = {"code": {"bench/b.py": hashlib.sha256(script.read_bytes()).hexdigest()}}
    assert prov.staleness(data, tmp_path)["state"] == "current"
    script.write_text("x = 2\n")
    assert prov.staleness(data, tmp_path) == {"state": "stale", "changed": ["bench/b.py"], "missing": [], "added": []}
    script.unlink()
    assert prov.staleness(data, tmp_path) == {"state": "stale", "changed": [], "missing": ["bench/b.py"], "added": []}
    assert prov.staleness({"commit": "abc"}, tmp_path)["state"] == "unknown"  # from before code records
    stamp = {"code": {**data["code"], "bench/provenance.py": "0" * 64}}  # the stamping code never counts
    (tmp_path / "bench" / "b.py").write_text("x = 1\n")
    assert prov.staleness(stamp, tmp_path)["state"] == "current"


def test_code_run_by_processes_the_bench_started_is_recorded_and_watched(tmp_path: Path) -> None:
    """A bench that drives pytest and the service (faults, soak) imports none of their code
    itself; ``ran`` records every file of the folders they ran, and a file added there
    later makes the result stale too."""
    result = prov.stamped({"benchmark": "x"}, ran=("worker", "tests/test_faults.py"))
    assert result["code_ran"] == ["worker", "tests/test_faults.py"]
    code = result["code"]
    assert "worker/celery_app.py" in code and "worker/tasks.py" in code
    assert "tests/test_faults.py" in code and not any(k.startswith("tests/") and k != "tests/test_faults.py" for k in code)
    assert all(k.endswith(".py") and "__pycache__" not in k for k in code)
    assert prov.staleness(result)["state"] == "current"
    again = prov.stamped({"benchmark": "x", "code_ran": ["worker"]})  # named by the result itself
    assert "worker/tasks.py" in again["code"] and again["code_ran"] == ["worker"]

    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "a.py").write_text("a = 1\n")
    data = {"code": prov.ran_files(["svc"], tmp_path), "code_ran": ["svc"]}
    assert prov.staleness(data, tmp_path)["state"] == "current"
    (tmp_path / "svc" / "b.py").write_text("b = 1\n")
    assert prov.staleness(data, tmp_path) == {"state": "stale", "changed": [], "missing": [], "added": ["svc/b.py"]}


def test_the_commit_is_dirty_for_code_not_for_results(tmp_path: Path) -> None:
    """A bench run after another rewrites tracked result files; that must not make the next
    result's commit "-dirty", while a changed source file must."""
    import shutil

    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "provenance.py", repo / "bench" / "provenance.py")
    (repo / "bench" / "results" / "x.json").write_text("{}")
    (repo / "bench" / "b.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    copy = _load(repo / "bench" / "provenance.py", "lethe_bench_provenance_copy")
    (repo / "bench" / "results" / "x.json").write_text('{"a": 1}')
    assert not copy.commit().endswith("-dirty")
    (repo / "bench" / "b.py").write_text("x = 2\n")
    assert copy.commit().endswith("-dirty")


def test_the_check_reports_every_result_file_and_the_docs_mark_the_stale_ones(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    pipeline = "unlearning_core/pipeline.py"
    good = hashlib.sha256((ROOT / pipeline).read_bytes()).hexdigest()
    (results / "fresh.json").write_text(json.dumps({"code": {pipeline: good}}))
    (results / "old.json").write_text(json.dumps({"code": {pipeline: "0" * 64}}))
    (results / "before.json").write_text(json.dumps({"commit": "abc"}))
    (results / "broken.json").write_text("{not json")
    states = prov.check(results)
    assert {k: v["state"] for k, v in states.items()} == {
        "before": "unknown", "broken": "unreadable", "fresh": "current", "old": "stale"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "provenance.py"), "--check", "--results", str(results)],
                         capture_output=True, text=True, check=True).stdout
    assert f"stale    old.json: its code changed since: {pipeline}" in out
    assert "1 of 4 result files match" in out
    strict = subprocess.run([sys.executable, str(ROOT / "bench" / "provenance.py"), "--strict", "--results",
                             str(results)], capture_output=True, text=True)
    assert strict.returncode == 1
    # every committed result file is readable by the check
    assert all(s["state"] != "unreadable" for s in prov.check(ROOT / "bench" / "results").values())

    hook = _load(ROOT / "docs" / "hooks" / "bench_tables.py", "lethe_docs_bench_tables_prov")
    lines = hook.provenance("old", json.loads((results / "old.json").read_text()))
    assert "**stale**" in lines and pipeline in lines
    assert "**stale**" not in hook.provenance("fresh", json.loads((results / "fresh.json").read_text()))


def test_a_speed_up_is_only_shown_for_a_method_that_changed_the_weights() -> None:
    hook = _load(ROOT / "docs" / "hooks" / "bench_tables.py", "lethe_docs_bench_tables_speed")
    data = {"original_forget_acc": 0.9, "original_test_acc": 0.9024}
    # recorded by the bench
    assert hook.speedup_cell({"method": "neg-grad", "weights_changed": False, "speedup_vs_retrain": 230}) == "no change"
    assert hook.speedup_cell({"method": "neg-grad", "weights_changed": True, "speedup_vs_retrain": 230}) == "230x"
    # files from before: accuracies equal to the original's bit for bit
    same = {"method": "neg-grad", "forget_acc": 0.9, "test_acc": 0.9024, "speedup_vs_retrain": 230}
    assert hook.speedup_cell(same, data) == "no change"
    assert hook.speedup_cell({**same, "test_acc": 0.9023}, data) == "230x"
    assert hook.speedup_cell({**same, "method": "sisa"}, data) == "230x"  # exact methods are never judged so
