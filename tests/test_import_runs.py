"""Importing a run recorded with the user's own loop into the service (``POST
/models/import``, ``lethe runs import``): verified first, then a model like any other.

The user's loop here is a plain PyTorch loop over the digits dataset with the dataset's own
sample ids, recorded with :func:`unlearning_core.record_training` straight into the
tenant's store (``<LETHE_BLOB_STORE>/tenants/acme``). Each refusal is checked to register
nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import bearer
from unlearning_core import record_training
from unlearning_core.data import load_dataset
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
KWARGS = {"in_channels": 1, "image_size": [8, 8], "num_classes": 10}


def tenant_store() -> LocalBlobStore:
    return LocalBlobStore(Path(os.environ["LETHE_BLOB_STORE"]) / "tenants" / "acme")


def user_loop(
    run_id: str, *, mode: str = "full", factory: str = "mlp", ids_prefix: str = "", crash_at: int | None = None,
    epochs: int = 2,
) -> None:
    """A user's training: own loop, own optimizer and scheduler, batches of 64 in a seeded order."""
    from unlearning_core.models import create_model

    data = load_dataset("digits", subject_size=10)
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    images, labels, ids = data.train.images, data.train.labels, list(data.train.sample_ids)
    g = torch.Generator().manual_seed(1)
    with record_training(
        model, opt, store=tenant_store(), run_id=run_id, model_factory=factory, model_kwargs=KWARGS,
        mode=mode, prune_first=0.9, prune_last=0.3, seed=0,
    ) as rec:
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(len(ids), generator=g)
            for start in range(0, len(ids), 64):
                batch = order[start : start + 64]
                if crash_at is not None and step == crash_at:
                    raise RuntimeError("the user's loop crashed")
                with rec.step([ids_prefix + ids[i] for i in batch.tolist()], epoch=epoch):
                    loss = F.cross_entropy(model(images[batch]), labels[batch])
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                sched.step()
                step += 1


async def register_digits(client, admin: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    r = await client.post("/datasets", json={"name": "digits", "source": "digits", "subject_size": 10}, headers=admin)
    assert r.status_code == 201, r.text


def work() -> int:
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from worker.embedded import process_pending

    return process_pending(session_factory=get_sessionmaker(), store=get_store(), device=CPU)


@pytest.mark.anyio
async def test_an_imported_run_serves_and_unlearns_like_a_trained_model(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    from unlearning_core.artifacts import open_artifact
    from unlearning_core.methods.amnesiac import subtract_steps
    from unlearning_core.weights import state_from_bytes

    admin = bearer(api_keys["admin"])
    await register_digits(client, admin)
    user_loop("user-run")
    r = await client.post("/models/import", json={"name": "imported", "run_id": "user-run", "dataset": "digits"}, headers=admin)
    assert r.status_code == 201, r.text
    model = r.json()
    assert (model["status"], model["method"], model["unlearn_method"], model["latest_version"]) == ("ready", "amnesiac", "amnesiac", 0)
    v0 = (await client.get("/models/imported/versions/0", headers=admin)).json()
    assert v0["metrics"]["test_acc"] > 0.8, v0["metrics"]

    # an erasure request: version 1 is the final weights minus exactly the recorded updates
    # of the steps that held the subject's samples
    r = await client.post("/erasure-requests", json={"subject_id": "subject-0007"}, headers=bearer(api_keys["requester"]))
    assert r.status_code == 202, r.text
    assert work() == 1
    status = (await client.get(f"/requests/{r.json()['id']}/status", headers=admin)).json()
    assert status["status"] == "completed" and status["jobs"][0]["model"] == "imported", status
    run = open_artifact(tenant_store(), "user-run")
    forget = set(load_dataset("digits", subject_size=10).train.sample_ids[70:80])
    positions = [i for i, s in enumerate(run.sample_table["sample_ids"]) if s in forget]
    steps = sorted(int(s) for s in run.index.steps_holding(positions))
    expected, _ = subtract_steps(run, run.load_weights(run.spec.trained_weights), steps, prune=None, device=CPU)
    weights = await client.get("/models/imported/versions/1/weights", headers=admin)
    assert weights.status_code == 200
    got = state_from_bytes(weights.content)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    report = await client.get("/models/imported/versions/1/report", headers=admin)
    assert report.status_code == 200 and "imported" in report.text


@pytest.mark.anyio
async def test_a_run_that_fails_verification_is_refused_and_registers_nothing(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(api_keys["admin"])
    await register_digits(client, admin)

    async def refused(run_id: str, *words: str, dataset: str = "digits") -> None:
        r = await client.post("/models/import", json={"name": "m", "run_id": run_id, "dataset": dataset}, headers=admin)
        assert r.status_code == 422, r.text
        for word in words:
            assert word in r.json()["detail"], (word, r.json()["detail"])
        assert (await client.get("/models/m", headers=admin)).status_code == 404
        assert (await client.get("/models", headers=admin)).json() == []

    with pytest.raises(RuntimeError):
        user_loop("crashed", crash_at=5)
    await refused("crashed", "crashed", "incomplete")
    await refused("nowhere", "no run 'nowhere'")
    user_loop("strangers", ids_prefix="x-", epochs=1)
    await refused("strangers", "are not in the dataset", "'x-")
    user_loop("by-path", factory="unlearning_core.models.simple:mlp", epochs=1)
    await refused("by-path", "not a registered model", "lethe.models")
    user_loop("tampered", epochs=1)
    store = tenant_store()
    updates = json.loads(store.get("runs/tampered/updates.json"))
    store.put(updates[3]["key"], b"\0" * 100)  # rewritten behind the run's back (sidecar matches)
    await refused("tampered", "update of step 3", "sha256")
    r = await client.post("/models/import", json={"name": "m", "run_id": "tampered", "dataset": "nope"}, headers=admin)
    assert r.status_code == 422 and "no dataset named 'nope'" in r.json()["detail"]


def test_lethe_runs_import_on_the_command_line(service_env: str, db_session) -> None:  # type: ignore[no-untyped-def]
    """The operator's CLI does the same import for a tenant."""
    from api.datasets.service import register

    register(db=db_session, name="digits", source="digits", subject_size=10, tenant="acme")
    user_loop("cli-run", mode="partial", epochs=1)
    lethe = str(Path(sys.executable).parent / "lethe")
    env = {**os.environ}
    done = subprocess.run(
        [lethe, "runs", "import", "--name", "cli-model", "--run-id", "cli-run", "--dataset", "digits", "--tenant", "acme", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "ready" and out["method"] == "partial-amnesiac"
    again = subprocess.run(
        [lethe, "runs", "import", "--name", "cli-model", "--run-id", "cli-run", "--dataset", "digits", "--tenant", "acme"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.anyio
async def test_an_imported_lineage_compacts_to_an_exact_version(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    """Lethe's loop retrains an SGD run from its recorded settings, factory and attached
    dataset; a run of another optimizer is refused with the reason."""
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from api.registry.flows import process_pending_training

    admin = bearer(api_keys["admin"])
    await register_digits(client, admin)
    user_loop("sgd-run", epochs=1)
    off = {"compact_within_days": None, "compact_after_requests": None, "max_accuracy_drop": None}
    r = await client.post(
        "/models/import", json={"name": "m", "run_id": "sgd-run", "dataset": "digits", "erasure_policy": off}, headers=admin
    )
    assert r.status_code == 201, r.text
    r = await client.post("/erasure-requests", json={"subject_id": "subject-0002"}, headers=bearer(api_keys["requester"]))
    assert work() == 1
    resp = await client.post("/models/m/compact", headers=admin)
    assert resp.status_code == 202, resp.text
    assert process_pending_training(session_factory=get_sessionmaker(), store=get_store(), device=CPU) == 1
    versions = (await client.get("/models/m/versions", headers=admin)).json()
    assert [v["method"] for v in versions] == ["train", "amnesiac", "compact"], versions
    assert versions[-1]["metrics"]["test_acc"] > 0.7  # one epoch, as the user ran it
    status = (await client.get(f"/requests/{r.json()['id']}/status", headers=admin)).json()
    assert status["exact"] is True, status

    # the user's loop with Adam: imported and unlearned, but never compacted by Lethe
    from unlearning_core.models import create_model

    data = load_dataset("digits", subject_size=10)
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = list(data.train.sample_ids)
    with record_training(model, opt, store=tenant_store(), run_id="adam-run", model_factory="mlp", model_kwargs=KWARGS, mode="full") as rec:
        for start in range(0, len(ids), 128):
            with rec.step(ids[start : start + 128], epoch=0):
                F.cross_entropy(model(data.train.images[start : start + 128]), data.train.labels[start : start + 128]).backward()
                opt.step()
                opt.zero_grad()
    assert (await client.post("/models/import", json={"name": "adam", "run_id": "adam-run", "dataset": "digits"}, headers=admin)).status_code == 201
    assert work() == 1  # it trained on subject-0002, erased before the import: applied at once
    refused = await client.post("/models/adam/compact", headers=admin)
    assert refused.status_code == 409 and "Adam" in refused.json()["detail"], refused.text
