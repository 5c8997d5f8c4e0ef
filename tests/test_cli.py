"""The ``lethe`` console script as a user runs it: JSON on the last line, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LETHE = [str(Path(sys.executable).with_name("lethe"))]


def lethe(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*LETHE, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("cli-store")
    out = last_json(
        lethe(
            "train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "32",
            "--lr", "0.05", "--seed", "1", "--record", "full", "--concentrate", "3:0.2",
            "--subject-size", "10", "--store", str(store), "--run-id", "cli", "--device", "cpu", "--json",
        )
    )
    assert out["record"] == "full" and out["steps"] == 2 * 45 and out["storage_bytes"] > 0
    assert out["test_acc"] > 0.8
    return store


def test_help_lists_the_commands() -> None:
    out = lethe("--help").stdout
    assert "train" in out and "unlearn" in out
    assert "--forget-subject" in lethe("unlearn", "--help").stdout


def test_unlearn_prints_metrics_as_json(trained: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# two samples\n0\n\n17\n")
    out = last_json(
        lethe("unlearn", "--store", str(trained), "--run-id", "cli", "--method", "partial-amnesiac",
              "--forget-ids", str(ids), "--recovery-steps", "3", "--device", "cpu", "--json")
    )
    for key in ("forget_acc", "retain_acc", "test_acc", "per_class_acc", "macro_f1", "mia_auc",
                "mia_efficacy", "layer_distance", "unlearn_seconds", "recovery_seconds",
                "relearn_steps", "storage_bytes", "batches_subtracted", "bytes_read", "weights"):
        assert key in out, key
    assert out["forget_samples"] == 2 and out["version"] == 1 and out["batches_subtracted"] <= 4
    assert Path(out["weights"]).is_file()


def test_forget_subject_and_class(trained: Path) -> None:
    out = last_json(lethe("unlearn", "--store", str(trained), "--run-id", "cli", "--method", "amnesiac",
                          "--forget-subject", "subject-0002", "--no-evaluate", "--json"))
    assert out["forget_samples"] == 10 and "forget_acc" not in out
    out = last_json(lethe("unlearn", "--store", str(trained), "--run-id", "cli", "--method", "amnesiac",
                          "--forget-class", "3", "--dry-run", "--no-evaluate", "--json"))
    assert out["version"] is None and out["new_version"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "no-such-data", "--model", "mlp", "--run-id", "x"], "no-such-data"),
        (["train", "--dataset", "digits", "--model", "no-such-net", "--run-id", "x"], "unknown model"),
        (["train", "--dataset", "digits", "--model", "mlp", "--run-id", "x", "--concentrate", "3"], "CLASS:SHARE"),
        (["train", "--dataset", "digits", "--model", "mlp", "--run-id", "x", "--prune-first", "1.5"], "prune-first"),
        (["unlearn", "--run-id", "missing", "--method", "amnesiac", "--forget-class", "1"], "no run 'missing'"),
        (["unlearn", "--run-id", "cli", "--method", "amnesiac"], "forget set is empty"),
        (["unlearn", "--run-id", "cli", "--method", "amnesiac", "--forget-class", "42"], "class 42"),
        (["unlearn", "--run-id", "cli", "--method", "amnesiac", "--forget-subject", "nobody"], "nobody"),
        (["unlearn", "--run-id", "cli", "--method", "forgetful", "--forget-class", "1"], "forgetful"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(trained: Path, args: list[str], message: str) -> None:
    proc = lethe(*args, "--store", str(trained), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_forget_ids_and_empty_file(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("0\nnot-a-sample\n")
    proc = lethe("unlearn", "--store", str(trained), "--run-id", "cli", "--method", "amnesiac",
                 "--forget-ids", str(bad), check=False)
    assert proc.returncode == 2 and "not-a-sample" in proc.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    proc = lethe("unlearn", "--store", str(trained), "--run-id", "cli", "--method", "amnesiac",
                 "--forget-ids", str(empty), check=False)
    assert proc.returncode == 2 and "names no sample ids" in proc.stderr


def test_corrupt_blob_is_reported(trained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(trained, copy)
    ledger = copy / "runs" / "cli" / "index.safetensors"
    ledger.chmod(0o644)
    ledger.write_bytes(ledger.read_bytes()[:-4] + b"oops")
    proc = lethe("unlearn", "--store", str(copy), "--run-id", "cli", "--method", "amnesiac",
                 "--forget-class", "3", check=False)
    assert proc.returncode == 2
    assert "index.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_train_method_and_record_must_agree(tmp_path: Path) -> None:
    proc = lethe("train", "--dataset", "digits", "--model", "mlp", "--store", str(tmp_path), "--run-id", "x",
                 "--method", "sisa", "--record", "full", check=False)
    assert proc.returncode != 0 and "--method sisa records none" in proc.stderr


def test_compare_runs_every_method_side_by_side(trained: Path) -> None:
    sisa = last_json(
        lethe("train", "--dataset", "digits", "--model", "mlp", "--method", "sisa", "--shards", "3",
              "--slices", "2", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--seed", "1",
              "--subject-size", "10", "--store", str(trained), "--run-id", "cli-sisa", "--device", "cpu", "--json")
    )
    assert sisa["method"] == "sisa" and sisa["samples_processed"] > 0
    methods = "retrain,sisa,amnesiac,partial-amnesiac,label-flip,neg-grad,partial-label-flip,partial-neg-grad"
    out = last_json(
        lethe("unlearn", "--store", str(trained), "--run-id", "cli", "--sisa-run-id", "cli-sisa",
              "--compare", methods, "--forget-class", "3", "--device", "cpu", "--json")
    )
    rows = {r["method"]: r for r in out["rows"]}
    assert out["methods"][0] == "retrain" and set(rows) == set(methods.split(","))
    assert rows["retrain"]["speedup_vs_retrain"] == pytest.approx(1.0)
    assert rows["retrain"]["guarantee"] == rows["sisa"]["guarantee"] == "exact"
    for name, row in rows.items():
        assert row["version"] is None  # compare publishes nothing
        assert row["speedup_vs_retrain"] > 0 and "retrain_gap" in row, name
        assert "retrained" in next(iter(row["layer_distance"].values())) or name in ("sisa", "retrain")
    assert rows["sisa"]["forget_acc"] <= 0.05 and rows["retrain"]["forget_acc"] <= 0.05
    assert out["single_model_test_acc"] > 0.8 and out["sisa_test_acc"] > 0.5
