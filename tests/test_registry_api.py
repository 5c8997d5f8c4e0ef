"""Datasets, training through the API and the model registry, over HTTP on PostgreSQL.

Real torch training (tiny: an MLP on digits for one epoch), real blob store, no mocks.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load as load_safetensors
from sqlalchemy import func, select

from api.audit.models import AuditEvent
from api.audit.service import verify
from api.blobs import get_store
from api.database.core import get_sessionmaker
from api.datasets.models import Dataset, Sample
from api.registry import flows
from api.registry.models import Model, ModelVersion, TrainingRun
from tests.conftest import bearer

pytestmark = pytest.mark.anyio

DIGITS = {"name": "digits", "source": "digits", "subject_size": 10}
MLP = {
    "name": "tiny",
    "dataset": "digits",
    "architecture": "mlp",
    "method": "partial-amnesiac",
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.05,
}


def process(limit: int | None = None) -> int:
    return flows.process_pending_training(
        session_factory=get_sessionmaker(), store=get_store(), device="cpu", limit=limit
    )


def counts(db) -> dict[str, int]:  # type: ignore[no-untyped-def]
    db.expire_all()
    return {
        name: int(db.scalar(select(func.count()).select_from(table)) or 0)
        for name, table in (
            ("datasets", Dataset),
            ("samples", Sample),
            ("models", Model),
            ("runs", TrainingRun),
            ("versions", ModelVersion),
            ("audit", AuditEvent),
        )
    }


def write_manifest(path: Path, n: int = 60, *, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        images=rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8),
        labels=np.arange(n, dtype=np.int64) % 3,
        sample_ids=np.array([f"img-{i:03d}" for i in range(n)]),
        subject_ids=np.array([f"person-{i // 4}" for i in range(n)]),
    )
    return path


async def register_digits(client, admin: str) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/datasets", json=DIGITS, headers=bearer(admin))
    assert r.status_code == 201, r.text
    return r.json()


async def test_register_digits_dataset(client, api_keys, db_session) -> None:
    admin = bearer(api_keys["admin"])
    body = await register_digits(client, api_keys["admin"])
    # digits: 1,797 images, seeded stratified 80/20 split -> 1,438 training samples;
    # consecutive subjects of 10 -> subject-0000 .. subject-0143.
    assert body["samples"] == body["num_samples"] == 1438
    assert body["subjects"] == 144 and body["erased"] == 0 and body["num_classes"] == 10
    assert (
        body["source"] == "digits"
        and body["info"]["image_size"] == [8, 8]
        and body["info"]["num_test"] == 359
    )

    listed = (await client.get("/datasets", headers=admin)).json()
    assert [d["name"] for d in listed] == ["digits"] and listed[0]["subjects"] == 144
    one = await client.get("/datasets/digits", headers=admin)
    assert one.status_code == 200 and one.json()["samples"] == 1438
    missing = await client.get("/datasets/nope", headers=admin)
    assert missing.status_code == 404 and missing.json()["detail"] == "no dataset named 'nope'"

    rows = db_session.execute(
        select(Sample.sample_id, Sample.position, Sample.subject_id).order_by(Sample.position)
    ).all()
    assert rows[0] == ("0", 0, "subject-0000") and rows[-1] == ("1437", 1437, "subject-0143")
    kinds = list(db_session.scalars(select(AuditEvent.kind)))
    assert kinds == ["dataset.registered"]


async def test_train_through_api_then_pull_weights(client, api_keys, db_session) -> None:
    admin, registry = bearer(api_keys["admin"]), bearer(api_keys["registry"])
    await register_digits(client, api_keys["admin"])

    r = await client.post("/models", json=MLP, headers=admin)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/models/tiny"
    queued = r.json()
    assert (
        queued["status"] == "training"
        and queued["latest_version"] is None
        and queued["versions"] == 0
    )
    assert (
        queued["unlearn_method"] == "partial-amnesiac" and queued["training"]["status"] == "queued"
    )
    assert (
        queued["training"]["run_id"].startswith("tiny-")
        and queued["training"]["config"]["epochs"] == 1
    )
    # Nothing to download before training.
    r = await client.get("/models/tiny/versions/latest", headers=registry)
    assert r.status_code == 404 and "no versions yet" in r.json()["detail"]

    assert process() == 1
    assert process() == 0  # nothing left

    models = (await client.get("/models", headers=registry)).json()
    assert models == [
        {
            "name": "tiny",
            "dataset": "digits",
            "architecture": "mlp",
            "method": "partial-amnesiac",
            "unlearn_method": "partial-amnesiac",
            "status": "ready",
            "latest_version": 0,
            "created_at": models[0]["created_at"],
        }
    ]
    model = (await client.get("/models/tiny", headers=registry)).json()
    assert (
        model["training"]["status"] == "completed"
        and model["training"]["error"] is None
        and model["versions"] == 1
    )

    versions = (await client.get("/models/tiny/versions", headers=registry)).json()
    assert len(versions) == 1
    v0 = versions[0]
    assert (
        v0["number"] == 0
        and v0["parent"] is None
        and v0["method"] == "train"
        and v0["answers"] == []
    )
    assert v0["weights_url"] == "/models/tiny/versions/0/weights"
    metrics = v0["metrics"]
    assert {"test_acc", "train_acc", "train_seconds", "storage_bytes"} <= set(metrics)
    assert 0.5 < metrics["test_acc"] <= 1.0 and metrics["storage_bytes"] > 0
    assert (await client.get("/models/tiny/versions/latest", headers=registry)).json() == v0
    assert (await client.get("/models/tiny/versions/0", headers=registry)).json() == v0

    # Weights: streamed safetensors, sha256 as ETag, conditional GET.
    r = await client.get("/models/tiny/versions/0/weights", headers=registry)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    sha = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{sha}"' and sha == v0["weights_sha256"]
    assert int(r.headers["content-length"]) == len(r.content) == v0["size"]
    assert r.headers["content-disposition"] == 'attachment; filename="tiny-v0.safetensors"'
    state = load_safetensors(r.content)
    assert state
    # The downloaded weights are a working model for 8x8 images, 10 classes.
    from unlearning_core.models import create_model

    net = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    net.load_state_dict(state)

    r = await client.get(
        "/models/tiny/versions/0/weights", headers={**registry, "If-None-Match": r.headers["etag"]}
    )
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == f'"{sha}"'
    r = await client.get(
        "/models/tiny/versions/latest/weights",
        headers={**registry, "If-None-Match": f'"abc", W/"{sha}"'},
    )
    assert r.status_code == 304
    r = await client.get(
        "/models/tiny/versions/latest/weights", headers={**registry, "If-None-Match": '"other"'}
    )
    assert (
        r.status_code == 200
        and hashlib.sha256(r.content).hexdigest() == sha
        and r.headers["cache-control"] == "no-cache"
    )
    r = await client.head("/models/tiny/versions/0/weights", headers=registry)
    assert (
        r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) == v0["size"]
    )

    # The lineage ledger lives in the database row; the audit trail holds both steps.
    run = db_session.scalar(select(TrainingRun))
    assert run.status == "completed" and run.ledger["versions"][0]["weights"]["sha256"] == sha
    assert run.ledger["subtracted_steps"] == []
    events = list(db_session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [e.kind for e in events] == [
        "dataset.registered",
        "model.training_queued",
        "model.trained",
    ]
    assert events[-1].model_name == "tiny" and events[-1].payload["weights_sha256"] == sha
    assert events[-1].payload["metrics"]["test_acc"] == metrics["test_acc"]
    assert events[1].actor == "test-admin"
    assert verify(db_session)["ok"]


async def test_unknown_model_or_version_is_404_with_message(client, api_keys) -> None:
    registry = bearer(api_keys["registry"])
    await register_digits(client, api_keys["admin"])
    r = await client.get("/models/nope", headers=registry)
    assert r.status_code == 404 and r.json() == {"detail": "no model named 'nope'"}
    for path in (
        "/models/nope/versions",
        "/models/nope/versions/latest",
        "/models/nope/versions/0/weights",
    ):
        r = await client.get(path, headers=registry)
        assert r.status_code == 404 and r.json()["detail"] == "no model named 'nope'", path
    flows.train_model_now(tenant="acme",
        session_factory=get_sessionmaker(), store=get_store(), device="cpu", spec=MLP
    )
    r = await client.get("/models/tiny/versions/7", headers=registry)
    assert (
        r.status_code == 404 and r.json()["detail"] == "model 'tiny' has no version 7; latest is 0"
    )
    r = await client.get("/models/tiny/versions/7/weights", headers=registry)
    assert r.status_code == 404 and "no version 7" in r.json()["detail"]
    r = await client.get("/models/tiny/versions/first", headers=registry)
    assert r.status_code == 422 and "number or 'latest'" in r.json()["detail"]


async def test_bad_input_is_4xx_with_message_and_writes_nothing(
    client, api_keys, db_session, tmp_path: Path
) -> None:
    admin = bearer(api_keys["admin"])
    await register_digits(client, api_keys["admin"])
    before = counts(db_session)
    (tmp_path / "hostname").write_text("lethe-test\n")  # tmp_path is LETHE_DATASET_ROOTS

    cases = [
        (
            "/datasets",
            {"name": "x", "source": str(tmp_path / "no-such-dataset")},
            422,
            "unknown dataset",
        ),
        ("/datasets", {"name": "x", "source": str(tmp_path / "hostname")}, 422, "not a dataset"),
        ("/datasets", {"name": "x", "source": "/etc/hostname"}, 403, "LETHE_DATASET_ROOTS"),
        ("/datasets", {"name": "x", "source": "no-such-dataset"}, 403, "LETHE_DATASET_ROOTS"),
        ("/datasets", DIGITS, 409, "a dataset named 'digits' already exists"),
        ("/datasets", {"name": "bad name!", "source": "digits"}, 422, "name"),
        (
            "/datasets",
            {"name": "x", "source": "digits", "test_fraction": 1.5},
            422,
            "test_fraction",
        ),
        ("/datasets", {"name": "x", "source": "digits", "extra": 1}, 422, "extra"),
        ("/models", {**MLP, "architecture": "gpt-9"}, 422, "unknown architecture 'gpt-9'"),
        ("/models", {**MLP, "dataset": "nope"}, 422, "no dataset named 'nope'"),
        ("/models", {**MLP, "method": "magic"}, 422, "method"),
        (
            "/models",
            {**MLP, "method": "plain", "unlearn_method": "amnesiac"},
            422,
            "cannot work from a model trained",
        ),
        ("/models", {**MLP, "unlearn_method": "forget-it"}, 422, "unknown unlearn_method"),
        ("/models", {**MLP, "concentrate": "3-0.2"}, 422, "CLASS:SHARE"),
        ("/models", {**MLP, "concentrate": "12:0.2"}, 422, "has 10 classes"),
        ("/models", {**MLP, "epochs": 0}, 422, "epochs"),
        ("/models", {**MLP, "mask": "zebra"}, 422, "mask"),
        ("/models", {**MLP, "group_steps": 0}, 422, "group_steps"),
        ("/models", {**MLP, "skip_layers": -1}, 422, "skip_layers"),
        ("/models", {**MLP, "method": "amnesiac", "skip_layers": 1}, 422, "it needs a method that records partial"),
        ("/models", {**MLP, "compression": "lz4"}, 422, "compression"),
        ("/models", {**MLP, "max_storage_bytes": 0}, 422, "max_storage_bytes"),
    ]
    for path, body, code, message in cases:
        r = await client.post(path, json=body, headers=admin)
        assert r.status_code == code, (body, r.text)
        assert message in r.json()["detail"], (body, r.json())
    for path in ("/datasets", "/models"):
        r = await client.post(
            path, content=b'{"name": "x", ', headers={**admin, "Content-Type": "application/json"}
        )
        assert r.status_code == 422 and r.json()["detail"], r.text
    assert counts(db_session) == before

    # A duplicate model name is a conflict, and the first model is untouched.
    assert (await client.post("/models", json=MLP, headers=admin)).status_code == 202
    after_one = counts(db_session)
    r = await client.post("/models", json={**MLP, "architecture": "small-cnn"}, headers=admin)
    assert r.status_code == 409 and r.json()["detail"] == "a model named 'tiny' already exists"
    assert counts(db_session) == after_one


async def test_authz_matrix(client, api_keys) -> None:
    admin, registry, requester = (bearer(api_keys[k]) for k in ("admin", "registry", "requester"))
    await register_digits(client, api_keys["admin"])
    flows.train_model_now(tenant="acme",
        session_factory=get_sessionmaker(), store=get_store(), device="cpu", spec=MLP
    )
    reads = [
        "/models",
        "/models/tiny",
        "/models/tiny/versions",
        "/models/tiny/versions/latest",
        "/models/tiny/versions/0/weights",
    ]
    for path in reads:
        for headers in (admin, registry):
            assert (await client.get(path, headers=headers)).status_code == 200, path
        r = await client.get(path, headers=requester)
        assert r.status_code == 403 and "registry" in r.json()["detail"], path
        r = await client.get(path)
        assert r.status_code == 401 and r.json()["detail"].startswith("missing API key"), path
        r = await client.get(path, headers=bearer("lethe_not-a-real-key-at-all"))
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key", path
    # Unknown model: the key is checked before the model is looked up.
    assert (await client.get("/models/nope", headers=requester)).status_code == 403
    assert (await client.get("/models/nope")).status_code == 401

    for headers, code in ((registry, 403), (requester, 403), ({}, 401)):
        assert (
            await client.post("/models", json={**MLP, "name": "other"}, headers=headers)
        ).status_code == code
        assert (
            await client.post("/datasets", json={**DIGITS, "name": "d2"}, headers=headers)
        ).status_code == code
        assert (await client.get("/datasets", headers=headers)).status_code == code
        assert (await client.get("/datasets/digits", headers=headers)).status_code == code
    r = await client.post("/models", json={**MLP, "name": "other"}, headers=registry)
    assert r.json()["detail"] == "this API key lacks the 'admin' scope"


async def test_upload_manifest_and_failed_training_is_recorded(
    client, api_keys, db_session, tmp_path: Path
) -> None:
    admin = bearer(api_keys["admin"])
    data = write_manifest(tmp_path / "m.npz").read_bytes()
    r = await client.post(
        "/datasets/upload",
        headers=admin,
        files={"file": ("people.npz", data, "application/octet-stream")},
        data={"name": "people", "test_fraction": "0.25"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["samples"] == 45 and body["subjects"] == 15 and body["num_classes"] == 3
    assert body["info"]["upload"] == {
        "filename": "people.npz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    kept = Path(body["source"])
    assert kept.is_file() and kept.read_bytes() == data
    ids = set(db_session.scalars(select(Sample.subject_id)))
    assert "person-0" in ids

    before = counts(db_session)
    r = await client.post(
        "/datasets/upload",
        headers=admin,
        files={"file": ("bad.npz", b"not a zip", "application/octet-stream")},
        data={"name": "broken"},
    )
    assert r.status_code == 422 and r.json()["detail"], r.text
    assert counts(db_session) == before
    assert sorted(p.name for p in kept.parent.iterdir()) == [
        kept.name
    ]  # nothing of the bad upload is left

    # A model on a path dataset whose file vanished fails with a readable error.
    broken = write_manifest(tmp_path / "gone.npz", seed=1)
    r = await client.post("/datasets", json={"name": "gone", "source": str(broken)}, headers=admin)
    assert r.status_code == 201, r.text
    broken.unlink()
    r = await client.post(
        "/models", json={**MLP, "name": "doomed", "dataset": "gone"}, headers=admin
    )
    assert r.status_code == 202
    assert process() == 1
    model = (await client.get("/models/doomed", headers=admin)).json()
    assert model["status"] == "failed" and model["training"]["status"] == "failed"
    assert "gone.npz" in model["training"]["error"] and model["latest_version"] is None
    event = db_session.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    assert (
        event.kind == "model.training_failed"
        and event.model_name == "doomed"
        and "gone.npz" in event.payload["error"]
    )

    # The uploaded dataset trains fine.
    model = flows.train_model_now(tenant="acme",
        session_factory=get_sessionmaker(),
        store=get_store(),
        device="cpu",
        spec={**MLP, "name": "people-mlp", "dataset": "people", "method": "amnesiac"},
    )
    assert model.status == "ready" and model.unlearn_method == "amnesiac"


async def test_erased_samples_are_left_out_of_new_training(client, api_keys, db_session) -> None:
    from api.database.core import utcnow

    admin = bearer(api_keys["admin"])
    await register_digits(client, api_keys["admin"])
    db_session.execute(
        Sample.__table__.update()
        .where(Sample.subject_id == "subject-0003")
        .values(erased_at=utcnow())
    )
    db_session.commit()
    assert (await client.get("/datasets/digits", headers=admin)).json()["erased"] == 10
    sisa = await client.post("/models", json={**MLP, "name": "s", "method": "sisa"}, headers=admin)
    assert sisa.status_code == 409 and "10 erased samples" in sisa.json()["detail"]
    r = await client.post("/models", json=MLP, headers=admin)
    assert r.status_code == 202, r.text
    assert process() == 1
    model = (await client.get(f"/models/{MLP['name']}", headers=admin)).json()
    assert model["status"] == "ready", model
    store = get_store(model["training"]["store_url"])  # the tenant's prefix
    spec = store.get_json(f"runs/{model['training']['run_id']}/run.json")
    trained = store.get_json(spec["samples"]["key"])
    assert "subject-0003" not in trained["subject_ids"] and len(spec["dataset"]["exclude_sample_ids"]) == 10


async def test_sisa_training_and_concurrent_workers(client, api_keys, db_session) -> None:
    admin = bearer(api_keys["admin"])
    await register_digits(client, api_keys["admin"])
    for name, extra in (
        ("s1", {"method": "sisa", "shards": 2, "slices": 2}),
        ("p1", {"method": "plain"}),
        ("a1", {}),
    ):
        r = await client.post("/models", json={**MLP, "name": name, **extra}, headers=admin)
        assert r.status_code == 202, r.text
    results: list[int] = []
    workers = [threading.Thread(target=lambda: results.append(process())) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum(results) == 3  # each queued run trained exactly once (FOR UPDATE SKIP LOCKED)
    models = {m["name"]: m for m in (await client.get("/models", headers=admin)).json()}
    assert {n: m["status"] for n, m in models.items()} == {
        "a1": "ready",
        "p1": "ready",
        "s1": "ready",
    }
    assert models["s1"]["unlearn_method"] == "sisa" and models["p1"]["unlearn_method"] == "retrain"
    assert db_session.scalar(select(func.count()).select_from(ModelVersion)) == 3
    s1 = (await client.get("/models/s1", headers=admin)).json()
    assert s1["training"]["config"]["shards"] == 2
    run = db_session.scalar(
        select(TrainingRun).where(TrainingRun.run_id == s1["training"]["run_id"])
    )
    assert run.ledger["checkpoints"]  # SISA slice checkpoints are part of the lineage ledger


async def test_interrupted_training_is_requeued_and_adopted(client, api_keys, db_session) -> None:
    import torch

    from unlearning_core import pipeline
    from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec

    admin = bearer(api_keys["admin"])
    await register_digits(client, api_keys["admin"])
    r = await client.post("/models", json=MLP, headers=admin)
    run_id = r.json()["training"]["run_id"]
    factory = get_sessionmaker()
    assert flows.claim(session_factory=factory) is not None
    # The worker trained the run into the store (the tenant's prefix), then died before publishing it.
    pipeline.train(
        get_store(r.json()["training"]["store_url"]),
        run_id=run_id,
        dataset=DatasetSpec(spec="digits", subject_size=10),
        model="mlp",
        training=TrainingSpec(
            epochs=1, batch_size=64, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0
        ),
        recording=RecordingSpec(mode="partial", prune_first=0.99, prune_last=0.5),
        device=torch.device("cpu"),
        evaluate=False,
    )
    assert process() == 0  # a running run is not picked up again
    assert flows.requeue_interrupted_training(session_factory=factory) == 1
    assert process() == 1
    model = (await client.get("/models/tiny", headers=admin)).json()
    assert model["status"] == "ready" and model["training"]["run_id"] == run_id
    v0 = (await client.get("/models/tiny/versions/0", headers=admin)).json()
    assert v0["metrics"]["test_acc"] > 0.5
    assert (
        v0["weights_sha256"]
        == get_store(model["training"]["store_url"]).stat(f"runs/{run_id}/weights/v0000.safetensors").sha256
    )


async def test_weights_replaced_behind_the_registry_are_refused(client, api_keys) -> None:
    registry = bearer(api_keys["registry"])
    await register_digits(client, api_keys["admin"])
    flows.train_model_now(tenant="acme",
        session_factory=get_sessionmaker(), store=get_store(), device="cpu", spec=MLP
    )
    v0 = (await client.get("/models/tiny/versions/0", headers=registry)).json()
    run_id = (await client.get("/models/tiny", headers=registry)).json()["training"]["run_id"]
    # Someone rewrites the blob (with a matching sidecar): the version's own sha256 says no.
    get_store().put(f"runs/{run_id}/weights/v0000.safetensors", b"not the weights")
    r = await client.get("/models/tiny/versions/0/weights", headers=registry)
    assert r.status_code == 500 and "does not match the sha256" in r.json()["detail"]
    assert v0["weights_sha256"] != hashlib.sha256(b"not the weights").hexdigest()
