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
