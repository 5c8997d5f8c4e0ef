"""Model plugins: a third-party package with a model of its own, installed into the venv.

``tests/plugins/lethe_toy_models`` is a package as a user would ship it: a network Lethe's
zoo does not have (BatchNorm and LayerNorm) declared in the ``lethe.models`` entry-point
group. The session installs it with pip (no index, no build isolation) and removes it
afterwards; the tests then use the model by its declared name through the CLI, the
service and the worker, and by its ``module:callable`` path through the CLI only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import bearer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tests" / "plugins" / "lethe_toy_models"
NAME = "toy-norm-net"


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def toy_models() -> Iterator[str]:
    """The package installed (not editable: its module lands in site-packages) for this module."""
    from unlearning_core.models import refresh_plugins

    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(PACKAGE))
    refresh_plugins()
    try:
        yield NAME
    finally:
        _pip("uninstall", "-y", "lethe-toy-models")
        refresh_plugins()


def lethe(*args: str) -> dict:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lethe"), *args, "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_plugin_model_is_registered_and_built_lazily(toy_models: str) -> None:
    from unlearning_core.models import create_model, is_registered, model_names

    assert toy_models in model_names() and is_registered("Toy_Norm_Net")
    net = create_model(toy_models, in_channels=1, image_size=(8, 8), num_classes=10)
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"BatchNorm2d", "LayerNorm"} <= kinds
    assert net(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
    # a path is imported on demand by the library, never when the caller forbids it
    by_path = create_model("lethe_toy_models.nets:build", in_channels=1, image_size=(8, 8), num_classes=3)
    assert by_path(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    from unlearning_core.errors import ModelError

    with pytest.raises(ModelError, match="not a registered model"):
        create_model("lethe_toy_models.nets:build", in_channels=1, image_size=(8, 8), num_classes=3, allow_import=False)
    with pytest.raises(ModelError, match="cannot import"):
        create_model("no_such_pkg.nets:build", in_channels=1, image_size=(8, 8), num_classes=3)


@pytest.mark.parametrize("model", [NAME, "lethe_toy_models.nets:build"])
def test_the_cli_trains_and_unlearns_a_plugin_model(toy_models: str, model: str, tmp_path: Path) -> None:
    """By its entry-point name and by its factory path: trained, recorded, unlearned."""
    store = str(tmp_path / "runs")
    trained = lethe(
        "train", "--dataset", "digits", "--subject-size", "10", "--model", model, "--epochs", "1",
        "--batch-size", "32", "--lr", "0.05", "--record", "full", "--store", store, "--run-id", "toy",
        "--device", "cpu",
    )
    assert trained["test_acc"] > 0.3, trained
    spec = json.loads((tmp_path / "runs" / "runs" / "toy" / "run.json").read_text())
    assert spec["model"] == model
    assert any(k.endswith("bn.running_mean") for k in spec["tensors"])  # buffers are recorded
    undone = lethe(
        "unlearn", "--store", store, "--run-id", "toy", "--forget-subject", "subject-0002", "--method", "amnesiac",
        "--device", "cpu",
    )
    assert undone["version"] == 1 and undone["batches_subtracted"] >= 1, undone


@pytest.mark.anyio
async def test_the_service_and_worker_use_a_plugin_model_by_name_only(  # type: ignore[no-untyped-def]
    toy_models: str, client, api_keys
) -> None:
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from api.registry.flows import process_pending_training
    from worker.embedded import process_pending

    admin = bearer(api_keys["admin"])
    r = await client.post("/datasets", json={"name": "digits", "source": "digits", "subject_size": 10}, headers=admin)
    assert r.status_code == 201, r.text
    body = {"dataset": "digits", "method": "amnesiac", "epochs": 1, "batch_size": 32, "lr": 0.05}
    # a factory path is code the caller would make the service import: refused
    r = await client.post("/models", json={**body, "name": "by-path", "architecture": "lethe_toy_models.nets:build"}, headers=admin)
    assert r.status_code == 422 and "unknown architecture" in r.text, r.text
    r = await client.post("/models", json={**body, "name": "toy", "architecture": toy_models}, headers=admin)
    assert r.status_code == 202, r.text
    cpu = torch.device("cpu")
    assert process_pending_training(session_factory=get_sessionmaker(), store=get_store(), device=cpu) == 1
    model = (await client.get("/models/toy", headers=admin)).json()
    assert model["status"] == "ready" and model["architecture"] == toy_models, model
    r = await client.post("/erasure-requests", json={"subject_id": "subject-0004"}, headers=bearer(api_keys["requester"]))
    assert r.status_code == 202, r.text
    assert process_pending(session_factory=get_sessionmaker(), store=get_store(), device=cpu) == 1
    status = (await client.get(f"/requests/{r.json()['id']}/status", headers=admin)).json()
    assert status["status"] == "completed", status
    weights = await client.get("/models/toy/versions/latest/weights", headers=admin)
    assert weights.status_code == 200 and (await client.get("/models/toy", headers=admin)).json()["latest_version"] == 1


# ---------------------------------------------------------------------------------------
# Dataset plug-ins and subject maps
# ---------------------------------------------------------------------------------------

CLAIMS = "toy-claims"


def write_map(path: Path, rows: list[tuple[str, str]], header: str = "sample_id,subject_id") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def claims_map(n: int = 120, per: int = 8) -> list[tuple[str, str]]:
    return [(f"claim-{i:05d}", f"person-{i // per:03d}") for i in range(n)]


def test_a_dataset_plugin_loads_by_name_with_its_own_ids(toy_models: str) -> None:
    from unlearning_core.data import load_dataset
    from unlearning_core.data.plugins import dataset_plugin_names

    assert CLAIMS in dataset_plugin_names()
    data = load_dataset(CLAIMS)
    assert (len(data.train), len(data.test), data.num_classes) == (120, 40, 3)
    assert data.train.sample_ids[:2] == ("claim-00000", "claim-00001")


def test_subject_maps_from_csv_and_parquet(toy_models: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unlearning_core.data import load_dataset

    csv_map = write_map(tmp_path / "subjects.csv", claims_map())
    parquet_map = tmp_path / "subjects.parquet"
    rows = claims_map()
    pq.write_table(pa.table({"sample_id": [a for a, _ in rows], "subject_id": [b for _, b in rows]}), parquet_map)
    for path in (csv_map, parquet_map):
        data = load_dataset(CLAIMS, subject_map=path)
        assert data.train.subject_ids[0] == "person-000" and data.train.subject_ids[119] == "person-014"
        assert len(data.train.positions_of_subject("person-003")) == 8


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (claims_map() + [("claim-99999", "person-x")], "sample_id,subject_id", "line 122: sample 'claim-99999' is not in dataset"),
        (claims_map()[:5] + [("claim-00002", "person-y")] + claims_map()[5:], "sample_id,subject_id", "line 7: sample 'claim-00002' is listed twice (first on line 4)"),
        (claims_map()[:-3], "sample_id,subject_id", "3 training samples of 'toy-claims' have no subject"),
        (claims_map()[:10] + [("claim-00010", "")] + claims_map()[11:], "sample_id,subject_id", "line 12: sample 'claim-00010' has an empty subject_id"),
        (claims_map(), "sample,subject", "line 1: the header must name the columns sample_id and subject_id"),
    ],
    ids=["unknown-id", "duplicate", "missing", "empty-subject", "header"],
)
def test_a_bad_subject_map_names_the_file_and_line(
    toy_models: str, tmp_path: Path, rows: list[tuple[str, str]], header: str, message: str
) -> None:
    from unlearning_core.data import load_dataset
    from unlearning_core.errors import DatasetError

    path = write_map(tmp_path / "bad.csv", rows, header)
    with pytest.raises(DatasetError) as info:
        load_dataset(CLAIMS, subject_map=path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


@pytest.mark.anyio
async def test_the_service_registers_a_plugin_dataset_with_a_subject_map_and_erases_a_subject(  # type: ignore[no-untyped-def]
    toy_models: str, client, api_keys, tmp_path: Path
) -> None:
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from api.registry.flows import process_pending_training
    from worker.embedded import process_pending

    admin = bearer(api_keys["admin"])
    good = write_map(tmp_path / "claims.csv", claims_map())  # tmp_path is LETHE_DATASET_ROOTS
    bad = write_map(tmp_path / "dup.csv", claims_map() + [("claim-00001", "person-z")])
    r = await client.post("/datasets", json={"name": "c0", "source": CLAIMS, "subject_map": str(bad)}, headers=admin)
    assert r.status_code == 422 and "line 122" in r.json()["detail"] and "listed twice" in r.json()["detail"], r.text
    r = await client.post("/datasets", json={"name": "c1", "source": CLAIMS, "subject_map": "/etc/passwd"}, headers=admin)
    assert r.status_code == 403 and "subject map" in r.json()["detail"], r.text
    r = await client.post("/datasets", json={"name": "claims", "source": CLAIMS, "subject_map": str(good)}, headers=admin)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["source"], body["samples"], body["subjects"]) == (CLAIMS, 120, 15)
    assert body["info"]["subject_map"]["path"] == str(good)

    # an upload sends its subject map along
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((30, 8, 8), np.uint8), labels=np.arange(30) % 2,
             sample_ids=np.array([f"u-{i}" for i in range(30)]))
    subjects = "sample_id,subject_id\n" + "".join(f"u-{i},who-{i % 4}\n" for i in range(30))
    r = await client.post(
        "/datasets/upload", headers=admin, data={"name": "up"},
        files={"file": ("m.npz", buf.getvalue()), "subject_map": ("subjects.csv", subjects.encode())},
    )
    assert r.status_code == 201 and r.json()["subjects"] == 4, r.text

    model = {"name": "claims-mlp", "dataset": "claims", "architecture": "mlp", "method": "amnesiac", "epochs": 2,
             "batch_size": 16, "lr": 0.05}
    assert (await client.post("/models", json=model, headers=admin)).status_code == 202
    cpu = torch.device("cpu")
    assert process_pending_training(session_factory=get_sessionmaker(), store=get_store(), device=cpu) == 1
    r = await client.post("/erasure-requests", json={"subject_id": "person-003"}, headers=bearer(api_keys["requester"]))
    assert r.status_code == 202, r.text
    assert process_pending(session_factory=get_sessionmaker(), store=get_store(), device=cpu) == 1
    status = (await client.get(f"/requests/{r.json()['id']}/status", headers=admin)).json()
    assert status["status"] == "completed" and status["jobs"][0]["details"]["forget_samples"] == 8, status


def test_the_cli_trains_with_a_subject_map_and_unlearns_a_loop_run_by_subject(toy_models: str, tmp_path: Path) -> None:
    """``lethe train --subject-map``; and a run recorded from the user's own loop over the
    plug-in's data gets that data attached (``lethe unlearn --dataset --subject-map``) for
    metrics and ``--forget-subject``."""
    from unlearning_core import record_training
    from unlearning_core.data import load_dataset
    from unlearning_core.models import create_model

    subjects = write_map(tmp_path / "subjects.csv", claims_map())
    store = str(tmp_path / "runs")
    trained = lethe(
        "train", "--dataset", CLAIMS, "--subject-map", str(subjects), "--model", "mlp", "--epochs", "1",
        "--batch-size", "16", "--lr", "0.05", "--record", "full", "--store", store, "--run-id", "mapped", "--device", "cpu",
    )
    assert trained["test_acc"] > 0.3
    undone = lethe("unlearn", "--store", store, "--run-id", "mapped", "--forget-subject", "person-003", "--method", "amnesiac", "--device", "cpu")
    assert undone["forget_samples"] == 8 if "forget_samples" in undone else undone["batches_subtracted"] >= 1, undone

    data = load_dataset(CLAIMS)
    torch.manual_seed(0)
    net = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    ids = list(data.train.sample_ids)
    with record_training(net, opt, store=store, run_id="loop", model_factory="mlp",
                         model_kwargs={"in_channels": 1, "image_size": [8, 8], "num_classes": 3}, mode="full") as rec:
        for start in range(0, len(ids), 16):
            with rec.step(ids[start : start + 16], epoch=0):
                torch.nn.functional.cross_entropy(net(data.train.images[start : start + 16]), data.train.labels[start : start + 16]).backward()
                opt.step()
                opt.zero_grad()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lethe"), "unlearn", "--store", store, "--run-id", "loop",
         "--forget-subject", "person-003", "--method", "amnesiac", "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode != 0 and "--dataset" in done.stderr, done.stderr[-1500:]
    undone = lethe(
        "unlearn", "--store", store, "--run-id", "loop", "--dataset", CLAIMS, "--subject-map", str(subjects),
        "--forget-subject", "person-003", "--method", "amnesiac", "--device", "cpu",
    )
    assert undone["version"] == 1 and undone["batches_subtracted"] == 1, undone  # person-003: samples 24..31, one batch
    assert "test_acc" in json.dumps(undone)
