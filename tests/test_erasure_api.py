"""Erasure requests over HTTP against the real PostgreSQL, blob store and torch.

Two small models are trained once per session on digits (subjects of ten samples): model
``digits-a`` (mlp, partial-amnesiac recording) and ``digits-b`` (mlp, full recording,
amnesiac). Each test copies their runs into its own blob folder and registers them in the
(emptied) database, as training through the API would have left them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from sqlalchemy import func, select, text, update

from api.audit.service import verify
from api.database.core import get_sessionmaker, utcnow
from api.datasets.models import Sample
from api.erasure import flows
from api.erasure.models import ErasureRequest, RequestJob
from api.erasure.states import TRANSITIONS, RequestStatus, check
from api.errors import ConflictError
from api.registry.models import Model, ModelVersion, TrainingRun
from tests.conftest import bearer
from tests.service_fixtures import insert_digits_dataset, insert_trained_model
from unlearning_core.data import load_dataset
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

pytestmark = pytest.mark.anyio

CPU = torch.device("cpu")
MODELS = {
    # name: (run id, recording, training method = default unlearning method, epochs)
    "digits-a": ("erasure-test-a", "partial", "partial-amnesiac", 2),
    "digits-b": ("erasure-test-b", "full", "amnesiac", 1),
}
SUBJECT = "subject-0003"  # training samples "30".."39"


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("erasure-runs")
    store = LocalBlobStore(root)
    data = load_dataset("digits", subject_size=10)
    for i, (run_id, record, _method, epochs) in enumerate(MODELS.values()):
        train_run(
            store,
            run_id=run_id,
            dataset=data,
            dataset_spec=DatasetSpec(spec="digits", subject_size=10),
            model_name="mlp",
            training=TrainingSpec(
                epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=i
            ),
            recording=RecordingSpec(
                mode=record,
                prune_first=0.95 if record == "partial" else 0.0,
                prune_last=0.3 if record == "partial" else 0.0,
            ),
            device=CPU,
        )
    return root


@pytest.fixture
def models(service_env: str, trained_runs: Path, db_session) -> dict[str, Any]:
    """The dataset, its samples, both models with their runs, ledgers and version 0."""
    from api.blobs import get_store

    shutil.copytree(trained_runs, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    store = get_store()
    dataset = insert_digits_dataset(db_session)
    out: dict[str, Any] = {"dataset_id": dataset.id, "store": store, "runs": {}}
    for name, (run_id, _record, method, _epochs) in MODELS.items():
        insert_trained_model(
            db_session, store=store, dataset_id=dataset.id, name=name, run_id=run_id,
            architecture="mlp", method=method,
        )
        out["runs"][name] = run_id
    db_session.add(
        Model(
            tenant="acme",
            name="still-training",
            dataset_id=dataset.id,
            architecture="mlp",
            method="partial-amnesiac",
            unlearn_method="partial-amnesiac",
            status="training",
        )
    )
    db_session.commit()
    return out


def work(limit: int | None = None) -> int:
    from api.blobs import get_store
    from worker.embedded import process_pending

    return process_pending(
        session_factory=get_sessionmaker(), store=get_store(), device=CPU, limit=limit
    )


def counts(db) -> dict[str, int]:
    db.expire_all()
    return {
        "requests": db.scalar(select(func.count(ErasureRequest.id))),
        "jobs": db.scalar(select(func.count(RequestJob.id))),
        "audit": db.scalar(text("SELECT count(*) FROM audit_events")),
        "versions": db.scalar(select(func.count(ModelVersion.id))),
        "erased": db.scalar(select(func.count(Sample.id)).where(Sample.erased_at.is_not(None))),
    }


async def file(client, key: str, body: dict[str, Any], **headers: str):
    return await client.post("/erasure-requests", json=body, headers={**bearer(key), **headers})


async def status_of(client, key: str, request_id: str) -> dict[str, Any]:
    resp = await client.get(f"/requests/{request_id}/status", headers=bearer(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---------------------------------------------------------------------------------------


async def test_lifecycle_publishes_a_version_tombstones_and_audits(
    client, api_keys, models, db_session
) -> None:
    requester, admin = api_keys["requester"], api_keys["admin"]
    before = utcnow()
    resp = await file(client, requester, {"subject_id": SUBJECT})
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    rid = accepted["id"]
    assert accepted["status"] == "queued" and accepted["status_url"] == f"/requests/{rid}/status"
    due = datetime.fromisoformat(accepted["due_at"])
    assert timedelta(days=30) <= due - before < timedelta(days=30, minutes=1)

    queued = await status_of(client, requester, rid)
    assert (
        queued["status"] == "queued"
        and queued["overdue"] is False
        and queued["completed_at"] is None
    )
    assert [(j["model"], j["method"], j["status"], j["version"]) for j in queued["jobs"]] == [
        ("digits-a", "partial-amnesiac", "queued", None),
        ("digits-b", "amnesiac", "queued", None),
    ]
    subject_ids = [str(i) for i in range(30, 40)]
    job_rows = db_session.scalars(select(RequestJob).order_by(RequestJob.id)).all()
    assert [j.sample_ids for j in job_rows] == [subject_ids, subject_ids]

    assert work() == 2
    done = await status_of(client, requester, rid)
    assert done["status"] == "completed" and done["error"] is None and done["completed_at"]
    store = models["store"]
    for job in done["jobs"]:
        assert job["status"] == "completed" and job["progress"] == 1.0 and job["step"] == "done"
        assert job["attempts"] == 1 and job["device"] == "cpu" and job["error"] is None
        assert job["details"]["batches_subtracted"] > 0 and job["details"]["forget_samples"] == 10
        version = job["version"]
        assert version["number"] == 1
        metrics = version["metrics"]
        for name in (
            "forget_acc",
            "retain_acc",
            "test_acc",
            "mia_auc",
            "mia_efficacy",
            "macro_f1",
            "per_class_acc",
            "layer_distance",
            "unlearn_seconds",
            "original_forget_acc",
        ):
            assert name in metrics, name
        assert 0.0 <= metrics["forget_acc"] <= 1.0 and "weights" not in metrics
        row = db_session.scalar(
            select(ModelVersion)
            .join(Model)
            .where(Model.name == job["model"], ModelVersion.number == 1)
        )
        assert row.weights_sha256 == version["weights_sha256"] and row.parent_number == 0
        assert hashlib.sha256(store.get(row.weights_key)).hexdigest() == version["weights_sha256"]
        # registry clients pull the new weights
        pulled = await client.get(
            f"/models/{job['model']}/versions/1/weights", headers=bearer(api_keys["registry"])
        )
        assert (
            pulled.status_code == 200
            and hashlib.sha256(pulled.content).hexdigest() == version["weights_sha256"]
        )

    # raw data: the subject's samples are tombstoned by this request
    db_session.expire_all()
    erased = db_session.scalars(select(Sample).where(Sample.erased_at.is_not(None))).all()
    assert sorted(s.sample_id for s in erased) == sorted(subject_ids)
    assert {s.erased_by_request for s in erased} == {rid} and {s.subject_id for s in erased} == {
        SUBJECT
    }
    # the lineage ledger lives in the database (the blob beside the run is untouched)
    run = db_session.scalar(
        select(TrainingRun).where(TrainingRun.run_id == models["runs"]["digits-a"])
    )
    assert [v["version"] for v in run.ledger["versions"]] == [0, 1]
    assert (
        sorted(run.ledger["erased_sample_ids"]) == sorted(subject_ids)
        and run.ledger["subtracted_steps"]
    )
    assert len(store.get_json(f"runs/{run.run_id}/ledger.json")["versions"]) == 1

    # the audit trail: every transition and each published version with its metrics
    audit = await client.get(f"/admin/requests/{rid}/audit", headers=bearer(admin))
    assert audit.status_code == 200
    events = audit.json()
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["request.received", "request.queued", "request.running"]
    assert kinds[-1] == "request.completed" and kinds.count("version.published") == 2
    assert kinds.count("job.started") == kinds.count("job.completed") == 2
    published = [e for e in events if e["kind"] == "version.published"]
    assert {e["model_name"] for e in published} == {"digits-a", "digits-b"}
    assert all("forget_acc" in e["payload"]["metrics"] for e in published)
    assert events[-1]["payload"]["samples_erased"] == 10
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert verify(db_session)["ok"] is True

    # exactly once: nothing left to do, and re-running a finished job is a no-op
    assert work() == 0
    flows.process_job(
        session_factory=get_sessionmaker(), store=store, job_id=job_rows[0].id, device=CPU
    )
    assert counts(db_session)["versions"] == 4

    # a second request for the same subject subtracts nothing twice: no new version
    again = await file(client, requester, {"subject_id": SUBJECT})
    assert again.status_code == 202 and again.json()["id"] != rid
    assert work() == 2
    second = await status_of(client, requester, again.json()["id"])
    assert second["status"] == "completed"
    for job in second["jobs"]:
        assert job["version"]["number"] == 1 and job["details"]["batches_subtracted"] == 0
        assert (
            job["details"]["batches_already_subtracted"] > 0
            and job["details"]["new_version"] is False
        )
    after = counts(db_session)
    assert after["versions"] == 4 and after["erased"] == 10
    assert db_session.scalar(select(func.count()).where(Sample.erased_by_request == rid)) == 10
    stats = (await client.get("/admin/requests/stats", headers=bearer(admin))).json()
    assert stats["counts"]["completed"] == 2 and stats["mean_seconds_to_complete"] > 0
    assert verify(db_session)["ok"] is True


async def test_idempotency_key(client, api_keys, models, db_session) -> None:
    key = {"Idempotency-Key": "req-2026-0001"}
    first = await file(
        client, api_keys["requester"], {"subject_id": "subject-0001", "models": ["digits-a"]}, **key
    )
    assert first.status_code == 202
    # same key, same body (other field order and spacing): the same request
    replay = await client.post(
        "/erasure-requests",
        content=b'{ "models": ["digits-a"],  "subject_id": "subject-0001" }',
        headers={**bearer(api_keys["requester"]), **key, "Content-Type": "application/json"},
    )
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    before = counts(db_session)
    assert before["requests"] == 1 and before["jobs"] == 1
    # same key, another body: 409, nothing written
    other = await file(client, api_keys["requester"], {"subject_id": "subject-0002"}, **key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    assert counts(db_session) == before
    # keys are per tenant: another tenant's identical key is not a replay of acme's request
    # but a request of its own, judged on globex's data (where acme's model does not exist)
    globex = await file(
        client,
        api_keys["other_tenant"],
        {"subject_id": "subject-0001", "models": ["digits-a"]},
        **key,
    )
    assert globex.status_code == 404 and globex.json()["detail"] == "unknown model 'digits-a'"
    # after processing, the replay answers with the same id and its current state
    assert work() == 1
    late = await file(
        client, api_keys["requester"], {"subject_id": "subject-0001", "models": ["digits-a"]}, **key
    )
    assert (
        late.status_code == 202
        and late.json()["id"] == first.json()["id"]
        and late.json()["status"] == "completed"
    )
    assert counts(db_session)["requests"] == 1


async def test_approval_flow(client, api_keys, models, db_session, monkeypatch) -> None:
    from api.config import get_settings

    monkeypatch.setenv("LETHE_REQUIRE_APPROVAL", "true")
    get_settings.cache_clear()
    requester, admin = api_keys["requester"], api_keys["admin"]
    held = await file(client, requester, {"sample_ids": ["5", "6"]})
    assert held.status_code == 202 and held.json()["status"] == "awaiting_approval"
    rid = held.json()["id"]
    assert {j["status"] for j in (await status_of(client, requester, rid))["jobs"]} == {"pending"}
    assert work() == 0  # held requests are not worked on
    forbidden = await client.post(f"/admin/requests/{rid}/approve", headers=bearer(requester))
    assert forbidden.status_code == 403
    approved = await client.post(
        f"/admin/requests/{rid}/approve", headers=bearer(admin), json={"reason": "checked ID"}
    )
    assert approved.status_code == 200 and approved.json()["status"] == "queued"
    assert {j["status"] for j in approved.json()["jobs"]} == {"queued"}
    assert work() == 2
    assert (await status_of(client, requester, rid))["status"] == "completed"

    denied_id = (await file(client, requester, {"subject_id": "subject-0009"})).json()["id"]
    denied = await client.post(
        f"/admin/requests/{denied_id}/deny",
        headers=bearer(admin),
        json={"reason": "not the subject"},
    )
    assert denied.status_code == 200 and denied.json()["status"] == "denied"
    assert {j["status"] for j in denied.json()["jobs"]} == {"cancelled"}
    assert work() == 0
    late = await client.post(f"/admin/requests/{denied_id}/approve", headers=bearer(admin))
    assert late.status_code == 409
    assert "'denied'" in late.json()["detail"] and "'queued'" in late.json()["detail"]
    audit = (await client.get(f"/admin/requests/{denied_id}/audit", headers=bearer(admin))).json()
    assert [e["kind"] for e in audit] == [
        "request.received",
        "request.awaiting_approval",
        "request.denied",
    ]
    assert (
        audit[-1]["payload"]["reason"] == "not the subject" and audit[-1]["actor"] == "test-admin"
    )

    cancelled_id = (await file(client, requester, {"subject_id": "subject-0010"})).json()["id"]
    cancelled = await client.post(f"/admin/requests/{cancelled_id}/cancel", headers=bearer(admin))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert counts(db_session)["erased"] == 2
    assert verify(db_session)["ok"] is True


async def test_failure_is_readable_and_retry_requeues(client, api_keys, models, db_session) -> None:
    requester, admin = api_keys["requester"], api_keys["admin"]
    store = models["store"]
    run_id = models["runs"]["digits-a"]
    for blob in store.get_json(f"runs/{run_id}/updates.json"):
        store.delete(blob["key"])  # the recorded updates are gone: unlearning must fail
    rid = (await file(client, requester, {"subject_id": SUBJECT, "models": ["digits-a"]})).json()[
        "id"
    ]
    premature = await client.post(f"/admin/requests/{rid}/retry", headers=bearer(admin))
    assert premature.status_code == 409 and "'queued'" in premature.json()["detail"]
    assert work() == 1
    failed = await status_of(client, requester, rid)
    assert failed["status"] == "failed" and failed["completed_at"] is None
    job = failed["jobs"][0]
    assert job["status"] == "failed" and job["version"] is None and job["step"] == "failed"
    assert "no blob" in job["error"] and run_id in job["error"]
    assert failed["error"].startswith("model 'digits-a': no blob")
    kinds = [
        e["kind"]
        for e in (await client.get(f"/admin/requests/{rid}/audit", headers=bearer(admin))).json()
    ]
    assert kinds[-2:] == ["job.failed", "request.failed"]
    after = counts(db_session)
    assert after["versions"] == 2 and after["erased"] == 0  # nothing published, nothing tombstoned
    run = db_session.scalar(select(TrainingRun).where(TrainingRun.run_id == run_id))
    assert len(run.ledger["versions"]) == 1 and run.ledger["subtracted_steps"] == []

    retried = await client.post(f"/admin/requests/{rid}/retry", headers=bearer(admin))
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["status"] == "queued" and body["error"] is None
    assert body["jobs"][0]["status"] == "queued" and body["jobs"][0]["error"] is None
    assert (await status_of(client, requester, rid))["status"] == "queued"
    again = await client.post(f"/admin/requests/{rid}/retry", headers=bearer(admin))
    assert again.status_code == 409 and "'queued'" in again.json()["detail"]
    assert work() == 1  # still broken: fails again, on its second attempt
    second = await status_of(client, requester, rid)
    assert second["status"] == "failed" and second["jobs"][0]["attempts"] == 2
    gave_up = await client.post(f"/admin/requests/{rid}/cancel", headers=bearer(admin))
    assert gave_up.status_code == 200 and gave_up.json()["status"] == "cancelled"
    assert verify(db_session)["ok"] is True


async def test_tenant_isolation(client, api_keys, models, db_session) -> None:
    from api.auth.service import create_key

    globex_admin = create_key(db_session, name="globex-admin", scopes=["admin"], tenant="globex")[1]
    db_session.commit()
    rid = (await file(client, api_keys["requester"], {"subject_id": SUBJECT})).json()["id"]
    other = await client.get(f"/requests/{rid}/status", headers=bearer(api_keys["other_tenant"]))
    assert other.status_code == 404 and rid in other.json()["detail"]
    unknown = await client.get(
        "/requests/no-such-request/status", headers=bearer(api_keys["other_tenant"])
    )
    assert unknown.status_code == 404 and unknown.json()["detail"] == other.json()[
        "detail"
    ].replace(rid, "no-such-request")
    assert (
        await client.get(f"/requests/{rid}/status", headers=bearer(api_keys["admin"]))
    ).status_code == 200
    listing = (await client.get("/admin/requests", headers=bearer(globex_admin))).json()
    assert listing["total"] == 0 and listing["items"] == []
    for path in (f"/admin/requests/{rid}", f"/admin/requests/{rid}/audit"):
        assert (await client.get(path, headers=bearer(globex_admin))).status_code == 404
    assert (
        await client.post(f"/admin/requests/{rid}/cancel", headers=bearer(globex_admin))
    ).status_code == 404
    assert (await client.get("/admin/requests/stats", headers=bearer(globex_admin))).json()[
        "total"
    ] == 0
    assert (await status_of(client, api_keys["requester"], rid))["status"] == "queued"


async def test_authz_matrix(client, api_keys, models) -> None:
    bad = "lethe_this-key-does-not-exist-0000000000"
    who = {
        "requester": bearer(api_keys["requester"]),
        "registry": bearer(api_keys["registry"]),
        "admin": bearer(api_keys["admin"]),
        "none": {},
        "bad": bearer(bad),
    }
    expected_post = {"requester": 202, "registry": 403, "admin": 202, "none": 401, "bad": 401}
    ids = {}
    for name, headers in who.items():
        resp = await client.post("/erasure-requests", json={"sample_ids": ["7"]}, headers=headers)
        assert resp.status_code == expected_post[name], (name, resp.text)
        assert resp.json()["detail" if resp.status_code >= 400 else "id"]
        if resp.status_code == 202:
            ids[name] = resp.json()["id"]
    rid = ids["requester"]
    expected_read = {"requester": 200, "registry": 403, "admin": 200, "none": 401, "bad": 401}
    expected_admin = {"requester": 403, "registry": 403, "admin": 200, "none": 401, "bad": 401}
    for name, headers in who.items():
        resp = await client.get(f"/requests/{rid}/status", headers=headers)
        assert resp.status_code == expected_read[name], (name, resp.text)
        for path in (
            "/admin/requests",
            "/admin/requests/stats",
            f"/admin/requests/{rid}",
            f"/admin/requests/{rid}/audit",
        ):
            resp = await client.get(path, headers=headers)
            assert resp.status_code == expected_admin[name], (name, path, resp.text)
        resp = await client.post(f"/admin/requests/{ids['admin']}/cancel", headers=headers)
        assert resp.status_code == (200 if name == "admin" else expected_admin[name]), (
            name,
            resp.text,
        )
        if resp.status_code >= 400:
            assert resp.json()["detail"]


async def test_bad_input_is_refused_and_writes_nothing(
    client, api_keys, models, db_session
) -> None:
    key = api_keys["requester"]
    before = counts(db_session)
    cases: list[tuple[Any, int, str]] = [
        ({"subject_id": "subject-9999"}, 422, "unknown data subject 'subject-9999'"),
        ({"sample_ids": ["5", "no-such-sample"]}, 422, "'no-such-sample'"),
        (
            {"subject_id": SUBJECT, "models": ["no-such-model"]},
            404,
            "unknown model 'no-such-model'",
        ),
        ({"subject_id": SUBJECT, "models": ["still-training"]}, 409, "not ready"),
        ({}, 422, "subject_id"),
        ({"sample_ids": []}, 422, "subject_id"),
        ({"models": ["digits-a"]}, 422, "subject_id"),
        (
            {"subject_id": SUBJECT, "method": "forget-harder"},
            422,
            "unknown unlearning method 'forget-harder'",
        ),
        (
            {"subject_id": SUBJECT, "method": "amnesiac", "models": ["digits-a"]},
            422,
            "cannot unlearn model 'digits-a'",
        ),
        ({"subject_id": SUBJECT, "method": "sisa"}, 422, "cannot unlearn"),
        ({"subject_id": SUBJECT, "priority": "high"}, 422, "priority"),
        ({"subject_id": 17}, 422, "subject_id"),
        ({"subject_id": ""}, 422, "subject_id"),
        ([SUBJECT], 422, ""),
    ]
    for body, code, message in cases:
        resp = await file(client, key, body)  # type: ignore[arg-type]
        assert resp.status_code == code, (body, resp.text)
        detail = resp.json()["detail"]
        assert isinstance(detail, str) and detail and message in detail, (body, detail)
    raw = {**bearer(key), "Content-Type": "application/json"}
    malformed = await client.post(
        "/erasure-requests", content=b'{"subject_id": "subject-0003"', headers=raw
    )
    assert malformed.status_code == 422 and "JSON" in malformed.json()["detail"]
    oversize = await client.post(
        "/erasure-requests",
        json={"sample_ids": [f"{i:08d}" for i in range(200_000)]},
        headers=bearer(key),
    )
    assert oversize.status_code == 413 and "larger than" in oversize.json()["detail"]
    long_key = await file(client, key, {"subject_id": SUBJECT}, **{"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 422 and "Idempotency-Key" in long_key.json()["detail"]
    assert counts(db_session) == before
    assert before["requests"] == 0 and before["audit"] == 0


async def test_admin_queries(client, api_keys, models, db_session) -> None:
    requester, admin = api_keys["requester"], api_keys["admin"]
    first = (await file(client, requester, {"subject_id": "subject-0001"})).json()["id"]
    second = (
        await file(client, requester, {"subject_id": "subject-0002", "models": ["digits-b"]})
    ).json()["id"]
    third = (
        await file(client, requester, {"sample_ids": ["5", "6"], "models": ["digits-a"]})
    ).json()["id"]
    assert work(limit=2) == 2  # the oldest request's two jobs
    db_session.execute(
        update(ErasureRequest)
        .where(ErasureRequest.id == third)
        .values(due_at=utcnow() - timedelta(days=1))
    )
    db_session.commit()

    async def ids(**params: Any) -> list[str]:
        resp = await client.get("/admin/requests", params=params, headers=bearer(admin))
        assert resp.status_code == 200, resp.text
        return [item["id"] for item in resp.json()["items"]]

    assert await ids() == [third, second, first]  # newest first
    assert await ids(status="completed") == [first]
    assert await ids(status=["queued", "completed"]) == [third, second, first]
    assert await ids(subject_id="subject-0002") == [second]
    assert await ids(model="digits-b") == [second, first]
    assert await ids(overdue="true") == [third]
    assert await ids(overdue="false") == [second, first]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(received_from=future) == []
    assert await ids(received_to=future, limit=1, offset=1) == [second]
    page = (await client.get("/admin/requests", params={"limit": 2}, headers=bearer(admin))).json()
    assert page["total"] == 3 and page["limit"] == 2 and len(page["items"]) == 2
    item = page["items"][0]
    assert item["overdue"] is True and item["models"] == ["digits-a"] and item["sample_count"] == 2
    bad = await client.get("/admin/requests", params={"status": "sleeping"}, headers=bearer(admin))
    assert bad.status_code == 422 and "status" in bad.json()["detail"]

    stats = (await client.get("/admin/requests/stats", headers=bearer(admin))).json()
    assert (
        stats["counts"]["completed"] == 1
        and stats["counts"]["queued"] == 2
        and stats["counts"]["failed"] == 0
    )
    assert stats["total"] == 3 and stats["overdue"] == 1 and stats["completed"] == 1
    assert stats["mean_seconds_to_complete"] > 0
    overdue = await status_of(client, requester, third)
    assert overdue["overdue"] is True and overdue["status"] == "queued"
    one = await client.get(f"/admin/requests/{first}", headers=bearer(admin))
    assert one.status_code == 200 and one.json()["status"] == "completed"


async def test_embedded_worker_runs_requests_and_resumes_interrupted_jobs(
    client, api_keys, models, db_session, monkeypatch
) -> None:
    from api.config import get_settings
    from worker.embedded import EmbeddedWorker

    requester = api_keys["requester"]
    interrupted = (
        await file(client, requester, {"subject_id": "subject-0004", "models": ["digits-a"]})
    ).json()["id"]
    job_id = db_session.scalar(select(RequestJob.id).where(RequestJob.request_id == interrupted))
    claimed = flows.claim(session_factory=get_sessionmaker(), job_id=job_id, device=CPU)
    assert claimed is not None  # ... and then the process "died" before doing it
    assert (
        flows.claim(session_factory=get_sessionmaker(), job_id=job_id, device=CPU) is None
    )  # never twice
    assert (await status_of(client, requester, interrupted))["status"] == "running"

    monkeypatch.setenv("LETHE_WORKER_POLL_SECONDS", "0.05")
    get_settings.cache_clear()
    worker = EmbeddedWorker(get_settings())
    worker.start()
    try:
        fresh = (await file(client, requester, {"subject_id": "subject-0005"})).json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {
                (await status_of(client, requester, r))["status"] for r in (interrupted, fresh)
            }
            if states == {"completed"}:
                break
            await anyio.sleep(0.1)
        assert states == {"completed"}, states
    finally:
        worker.stop()
    assert not worker.running
    resumed = await status_of(client, requester, interrupted)
    assert resumed["jobs"][0]["attempts"] == 2 and resumed["jobs"][0]["version"]["number"] == 1
    kinds = [
        e["kind"]
        for e in (
            await client.get(
                f"/admin/requests/{interrupted}/audit", headers=bearer(api_keys["admin"])
            )
        ).json()
    ]
    assert kinds == [
        "request.received",
        "request.queued",
        "request.running",
        "job.started",
        "request.queued",
        "request.running",
        "job.started",
        "version.published",
        "version.withdrawal_scheduled",
        "job.completed",
        "request.completed",
    ]
    assert verify(db_session)["ok"] is True


def test_state_machine_refuses_illegal_moves_naming_both_states() -> None:
    for current in RequestStatus:
        for target in RequestStatus:
            if target in TRANSITIONS[current]:
                check("r1", current, target)
                continue
            with pytest.raises(ConflictError) as err:
                check("r1", current, target, action="move")
            assert f"'{current.value}'" in str(err.value) and f"'{target.value}'" in str(err.value)
    final = {s for s, nxt in TRANSITIONS.items() if not nxt}
    assert final == {RequestStatus.COMPLETED, RequestStatus.DENIED, RequestStatus.CANCELLED}


async def test_concurrent_workers_publish_each_version_once(
    client, api_keys, models, db_session
) -> None:
    import threading

    ids = [
        (await file(client, api_keys["requester"], {"subject_id": f"subject-00{n:02d}"})).json()[
            "id"
        ]
        for n in (11, 12, 13)
    ]
    done: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            done.append(work())
        except Exception as exc:  # noqa: BLE001 (surfaced below)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sum(done) == 6, (done, errors)
    for rid in ids:
        assert (await status_of(client, api_keys["requester"], rid))["status"] == "completed"
    db_session.expire_all()
    for name in MODELS:
        numbers = db_session.scalars(
            select(ModelVersion.number)
            .join(Model)
            .where(Model.name == name)
            .order_by(ModelVersion.number)
        ).all()
        assert numbers == [0, 1, 2, 3]
        run = db_session.scalar(select(TrainingRun).join(Model).where(Model.name == name))
        assert [v["version"] for v in run.ledger["versions"]] == [0, 1, 2, 3]
        assert len(run.ledger["erased_sample_ids"]) == 30
    jobs = db_session.scalars(select(RequestJob)).all()
    assert {j.attempts for j in jobs} == {1} and len({j.version_id for j in jobs}) == 6
    assert verify(db_session)["ok"] is True
