"""``bench/erasure_stream.py`` end to end on digits: a short request stream with a policy
that compacts every 3 requests. A compaction must happen, every request must get an exact
time, and each compaction run's stored sample list must hold none of the samples erased
before it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.store import LocalBlobStore

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench():  # the script as a module
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the script imports ``common`` from its own folder
    spec = importlib.util.spec_from_file_location("lethe_bench_erasure_stream", BENCH / "erasure_stream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stream_compacts_and_makes_every_request_exact(tmp_path: Path) -> None:
    bench = load_bench()
    work = tmp_path / "work"
    result = bench.main([
        "--dataset", "digits", "--train-samples", "0", "--arch", "mlp", "--epochs", "1",
        "--requests", "6", "--models", "partial", "--policy", "default",
        "--compact-after-requests", "3", "--max-subtracted-share", "none",
        "--max-accuracy-drop", "none", "--recovery-steps", "2", "--ablation", "",
        "--retain-eval", "200", "--workdir", str(work), "--no-plot", "--out", str(tmp_path / "r.json"),
    ])
    stream = result["configurations"]["partial/default"]
    assert stream["compactions"] >= 1 and stream["triggers"].get("requests", 0) >= 1
    assert stream["exact_requests"] == 6
    assert all(r["days_to_exact"] is not None for r in stream["requests_log"])
    assert stream["within_policy_days"] is True
    assert "commit" in result and (tmp_path / "r.json").is_file()

    store = LocalBlobStore(work / "partial-default")
    table = RecordedRun.open(store, "stream-partial").sample_table
    subjects = dict(zip(table["sample_ids"], table["subject_ids"], strict=True))
    for comp in stream["compaction_log"]:
        before = {r["subject"] for r in stream["requests_log"][: comp["after_requests"]]}
        erased = {sid for sid, subj in subjects.items() if subj in before}
        assert len(erased) == comp["excluded_total"] > 0
        run = RecordedRun.open(store, comp["run_id"])
        assert run.spec.origin is not None and run.spec.origin.run_id == comp["replaced_run"]
        stored = store.get_json(run.spec.samples.key)["sample_ids"]
        assert erased.isdisjoint(stored)
        assert len(stored) == len(table["sample_ids"]) - len(erased)
