"""Malformed inputs through the user-facing doors: ``lethe train`` / ``lethe unlearn`` and
``POST /datasets``, with damaged dataset files and bad options. Each must stop with one
readable error naming the file or option, and write nothing (no run, no rows).

The loaders' own error messages are unit-tested in tests/test_datasets.py; here the same
damage goes through the command line and the API, and the store is checked to stay empty.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import bearer
from tests.test_datasets import _idx_bytes, _write_idx_folder

# ---------------------------------------------------------------------------------------
# Damaged files: (name, damage(folder) -> the file the message must name, words it must hold)
# ---------------------------------------------------------------------------------------


def _truncate(folder: Path) -> str:
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    return path.name


def _wrong_magic(folder: Path) -> str:
    path = folder / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    return path.name


def _wrong_shape(folder: Path) -> str:  # images stored as N x (H*W): two dims, not three
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(np.zeros((30, 20), np.uint8), 0x802))
    return path.name


def _labels_out_of_range(folder: Path) -> str:  # one corrupt byte in a 10-class label file
    path = folder / "train-labels-idx1-ubyte"
    labels = np.frombuffer(path.read_bytes()[8:], np.uint8).copy()
    labels[4] = 200
    path.write_bytes(_idx_bytes(labels, 0x801))
    return path.name


def _count_mismatch(folder: Path) -> str:
    path = folder / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(np.zeros(4, np.uint8), 0x801))
    return path.name


def _empty_file(folder: Path) -> str:
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(b"")
    return path.name


def _not_gzip(folder: Path) -> str:
    path = folder / "train-images-idx3-ubyte"
    path.unlink()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00" * 64)[:20])
    return "train-images-idx3-ubyte.gz"


def _missing(folder: Path) -> str:
    (folder / "t10k-images-idx3-ubyte").unlink()
    return "t10k-images-idx3-ubyte"


DAMAGE: dict[str, tuple[Callable[[Path], str], str]] = {
    "truncated": (_truncate, "truncated"),
    "wrong-magic": (_wrong_magic, "magic"),
    "wrong-shape": (_wrong_shape, "magic 0x00000802"),  # idx magic numbers encode the dims
    "labels-out-of-range": (_labels_out_of_range, "200"),
    "count-mismatch": (_count_mismatch, "labels"),
    "empty-file": (_empty_file, "truncated"),
    "bad-gzip": (_not_gzip, "gzip"),
    "missing-file": (_missing, "not found"),
}


def damaged(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """A ten-class idx folder named like Fashion-MNIST, damaged as ``case`` says."""
    folder = tmp_path / "fashion-mnist"
    _write_idx_folder(folder, gz=False, classes=10, n_train=30, n_test=10)
    damage, words = DAMAGE[case]
    return folder, damage(folder), words


def lethe(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run the real console entry point in-process; (exit status, stderr)."""
    from api.cli import main

    monkeypatch.setattr(sys, "argv", ["lethe", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    return int(exit_.value.code or 0), capsys.readouterr().err


def written(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_idx_files_through_lethe_train(case: str, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder, culprit, words = damaged(tmp_path, case)
    store = tmp_path / "store"
    code, err = lethe(
        ["train", "--dataset", str(folder), "--model", "mlp", "--store", str(store), "--run-id", "r", "--epochs", "1",
         "--device", "cpu"],
        capsys, monkeypatch,
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert culprit in lines[0] and words in lines[0], lines[0]
    assert written(store) == [], written(store)


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["truncated", "wrong-magic", "labels-out-of-range", "missing-file"])
async def test_damaged_idx_files_through_the_api(case: str, tmp_path: Path, client, api_keys, db_session) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    folder, culprit, words = damaged(tmp_path, case)
    resp = await client.post(
        "/datasets", json={"name": "broken", "source": str(folder)}, headers=bearer(api_keys["admin"])
    )
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert culprit in detail and words in detail, detail
    assert db_session.execute(text("SELECT count(*) FROM datasets")).scalar() == 0
    assert db_session.execute(text("SELECT count(*) FROM samples")).scalar() == 0


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    base = {
        "images": np.zeros((12, 4, 4), np.uint8),
        "labels": np.arange(12) % 3,
        "sample_ids": np.array([f"s{i}" for i in range(12)]),
    }
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"labels": np.arange(12) - 1}, "labels must be >= 0"),
        ({"labels": np.arange(11) % 3}, "labels"),
        ({"images": np.zeros((12, 4), np.uint8)}, "N x H x W"),
        ({"sample_ids": np.array([f"s{i % 6}" for i in range(12)])}, "unique"),
        ({"sample_ids": np.array([{"i": i} for i in range(12)], dtype=object)}, "manifest"),  # needs pickle
    ],
    ids=["negative-labels", "label-count", "image-shape", "duplicate-ids", "pickled-ids"],
)
def test_bad_npz_manifests_through_lethe_train(arrays, words: str, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = _npz(tmp_path / "m.npz", **arrays)
    store = tmp_path / "store"
    code, err = lethe(
        ["train", "--dataset", str(path), "--model", "mlp", "--store", str(store), "--run-id", "r", "--device", "cpu"],
        capsys, monkeypatch,
    )
    assert code == 2 and err.startswith("error: ") and words in err and "Traceback" not in err, err
    assert written(store) == []


# ---------------------------------------------------------------------------------------
# Bad options: usage errors name the option; nothing is written
# ---------------------------------------------------------------------------------------

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (TRAIN + ["--run-id", "../escape"], "--run-id"),
        (TRAIN + ["--run-id", "has space"], "--run-id"),
        (TRAIN + ["--run-id", "r", "--prune-first", "1.5"], "prune"),
        (TRAIN + ["--run-id", "r", "--prune-first", "-0.1"], "prune"),
        (TRAIN + ["--run-id", "r", "--concentrate", "3"], "CLASS:SHARE"),
        (TRAIN + ["--run-id", "r", "--concentrate", "3:1.5"], "concentration share"),
        (TRAIN + ["--run-id", "r", "--concentrate", "x:0.5"], "concentrate"),
        (TRAIN + ["--run-id", "r", "--concentrate", "42:0.5"], "42"),
        (TRAIN + ["--run-id", "r", "--epochs", "0"], "--epochs"),
        (TRAIN + ["--run-id", "r", "--device", "tpu"], "tpu"),
        (["train", "--dataset", "/no/such/folder", "--model", "mlp", "--run-id", "r"], "/no/such/folder"),
        (["unlearn", "--run-id", "nope", "--method", "amnesiac", "--forget-class", "1"], "no run 'nope'"),
        (["unlearn", "--run-id", "../x", "--method", "amnesiac", "--forget-class", "1"], "--run-id"),
        (["unlearn", "--run-id", "r", "--method", "amnesiac", "--forget-ids", "/no/such/ids.txt"], "ids.txt"),
    ],
)
def test_bad_options_name_the_problem_and_write_nothing(args, words: str, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    code, err = lethe([*args, "--store", str(store)], capsys, monkeypatch)
    assert code == 2, (code, err)
    assert words in err and "Traceback" not in err, err
    assert written(store) == [], written(store)
