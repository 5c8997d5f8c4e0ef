"""The exact tier: compaction, the erasure policy, and the tier of every job.

On the real PostgreSQL (and, for the kill -9 test, the real Redis and ``lethe worker``
processes). The compaction in the middle of a stream is driven step by step in-process,
so "a request arriving while it trains" is a fact of the test, not a race it may lose.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from api.audit.models import AuditEvent
from api.audit.service import verify
from api.auth.dependencies import Principal
from api.auth.models import ApiKey
from api.blobs import get_store
from api.compaction import flows as compaction_flows
from api.compaction import service as compaction
from api.database.core import get_sessionmaker
from api.datasets.models import Sample
from api.erasure import service as erasure
from api.erasure.models import ErasureRequest, RequestJob
from api.erasure.schemas import ErasureRequestCreate
from api.registry import flows as training
from api.registry.models import Model, ModelVersion, TrainingRun
from tests.conftest import bearer
from tests.test_celery_workers import (  # noqa: F401  (fixtures)
    broker,
    copy_run,
    register_digits,
    register_model,
    workers,
)
from unlearning_core.compaction import CompactionPolicy, LineageState, Trigger, due_trigger
from unlearning_core.runs.spec import RunSpec
from worker.embedded import process_pending

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

CPU = torch.device("cpu")


def subject(n: int) -> str:
    return f"subject-{n:04d}"


def requester(db) -> Principal:  # type: ignore[no-untyped-def]
    key = db.scalar(select(ApiKey).where(ApiKey.name == "test-requester"))
    return Principal(key_id=key.id, name=key.name, tenant=key.tenant, scopes=frozenset({"requester"}))


def file_now(subject_id: str, model: str) -> str:
    """File a request from its own session (as a concurrent API call would)."""
    with get_sessionmaker()() as db:
        request, _ = erasure.create(
            db=db,
            principal=requester(db),
            body=ErasureRequestCreate(subject_id=subject_id, models=[model]),
            idempotency_key=None,
        )
        return request.id


def work(store) -> int:  # type: ignore[no-untyped-def]
    return process_pending(session_factory=get_sessionmaker(), store=store, device=CPU)


def status(db, request_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    db.expire_all()
    request = db.get(ErasureRequest, request_id)
    return erasure.status_of(db=db, request=request).model_dump(mode="json")


def compaction_run(db, model: str) -> TrainingRun:  # type: ignore[no-untyped-def]
    db.expire_all()
    return db.scalar(
        select(TrainingRun)
        .join(Model)
        .where(Model.name == model, TrainingRun.kind == "compaction")
        .order_by(TrainingRun.id.desc())
    )


def train_claimed(run_pk: int, store) -> bool:  # type: ignore[no-untyped-def]
    token = training.claim(session_factory=get_sessionmaker(), run_pk=run_pk)
    assert token is not None
    return training.process_training_run(
        session_factory=get_sessionmaker(), store=store, device=CPU, token=token
    )


@pytest.fixture
def partial_model(db_session, api_keys, recorded_runs) -> Any:
    """Model ``m``: the recorded partial-amnesiac digits run, as training leaves it."""
    store = get_store()
    copy_run(recorded_runs, store, "celery-small")
    dataset_id = register_digits(db_session)
    register_model(db_session, store, dataset_id, "m", "celery-small")
    return store


async def test_a_stream_with_a_compaction_in_the_middle(
    client, api_keys, db_session, partial_model, monkeypatch
) -> None:
    store = partial_model
    admin = bearer(api_keys["admin"])
    early = [file_now(subject(n), "m") for n in (1, 2)]
    assert work(store) == 2
    first = status(db_session, early[0])
    job = first["jobs"][0]
    assert first["status"] == "completed" and first["exact"] is False
    assert job["guarantee"] == "approximate" and job["approximate_version"] == 1
    assert job["exact_version"] is None and job["exact_at"] is None
    assert job["exact_due_at"] <= first["due_at"]

    resp = await client.post("/models/m/compact", headers=admin)
    assert resp.status_code == 202, resp.text
    assert resp.json()["trigger"] == "manual" and resp.json()["status"] == "queued"
    again = await client.post("/models/m/compact", headers=admin)
    assert again.status_code == 409 and "already" in again.json()["detail"]
    run_pk = compaction_run(db_session, "m").id

    during: dict[str, str] = {}
    real_compact = compaction_flows.compact

    def compact_with_arrivals(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # Filed after the compaction started (its exclusions are fixed): answered on the
        # old lineage while it trains ...
        during["answered"] = file_now(subject(3), "m")
        assert work(store) == 1
        # ... and filed while it trains, answered once the new lineage is published.
        during["waiting"] = file_now(subject(4), "m")
        return real_compact(*args, **kwargs)

    monkeypatch.setattr(compaction_flows, "compact", compact_with_arrivals)
    assert train_claimed(run_pk, store)

    db_session.expire_all()
    run = db_session.get(TrainingRun, run_pk)
    assert run.status == "completed" and run.trigger == "manual"
    # The new lineage's ledger starts empty: one version (the compaction), nothing subtracted.
    assert run.ledger["subtracted_steps"] == [] and run.ledger["erased_sample_ids"] == []
    assert [v["method"] for v in run.ledger["versions"]] == ["compact"]
    compacted = run.ledger["versions"][0]["version"]
    assert compacted == 4  # v1, v2 (early), v3 (answered during), then the compaction

    # Exact means exact: nothing tombstoned before it started is in its stored sample list.
    spec = RunSpec.model_validate(store.get_json(f"runs/{run.run_id}/run.json"))
    trained = set(store.get_json(spec.samples.key)["sample_ids"])
    tombstoned_early = set(
        db_session.scalars(select(Sample.sample_id).where(Sample.erased_by_request.in_(early)))
    )
    assert len(tombstoned_early) == 20 and not trained & tombstoned_early
    assert spec.origin is not None and spec.origin.trigger == "manual"
    during_ids = set(
        db_session.scalars(select(Sample.sample_id).where(Sample.subject_id == subject(3)))
    )
    assert during_ids and during_ids <= trained  # it was still asked for nothing when the compaction started

    for rid in early:
        st = status(db_session, rid)
        assert st["exact"] is True, __import__("json").dumps(st)
        assert st["jobs"][0]["guarantee"] == "exact" and st["jobs"][0]["exact_version"] == compacted

    # The one answered on the old lineage gets its erasure applied again on the new one.
    mid = status(db_session, during["answered"])
    assert [j["status"] for j in mid["jobs"]] == ["completed", "queued"]
    assert mid["jobs"][1]["reapplies_job_id"] == mid["jobs"][0]["job_id"]
    assert mid["status"] == "completed" and mid["exact"] is False

    assert work(store) == 2  # the re-applied job and the request filed during the compaction
    mid = status(db_session, during["answered"])
    assert [j["version"]["number"] for j in mid["jobs"]] == [3, 5]
    assert all(j["guarantee"] == "approximate" for j in mid["jobs"])
    late = status(db_session, during["waiting"])
    assert len(late["jobs"]) == 1 and late["jobs"][0]["approximate_version"] == 6
    assert late["exact"] is False

    # None lost, none answered twice: one version per job that changed the model.
    published = db_session.scalar(
        select(func.count(AuditEvent.id)).where(AuditEvent.kind == "version.published")
    )
    compactions = db_session.scalar(
        select(func.count(AuditEvent.id)).where(AuditEvent.kind == "model.compacted")
    )
    jobs = db_session.scalar(select(func.count(RequestJob.id)))
    assert (published, compactions, jobs) == (5, 1, 5)
    assert verify(db_session)["ok"]

    versions = (await client.get("/models/m/versions", headers=bearer(api_keys["registry"]))).json()
    assert [(v["method"], v["guarantee"]) for v in versions][:5] == [
        ("train", "exact"), *[("partial-amnesiac", "approximate")] * 3, ("compact", "exact"),
    ]
    health = (await client.get("/models/m/health", headers=bearer(api_keys["registry"]))).json()
    assert health["lineage"]["kind"] == "compaction" and health["lineage"]["first_version"] == 4
    assert health["versions_since_compaction"] == 2
    assert health["awaiting_exact"]["requests"] == 2
    assert health["compaction"]["status"] == "completed" and health["alerts"] == []
    metrics = (await client.get("/metrics", headers=bearer(api_keys["admin"]))).text
    assert "lethe_requests_awaiting_exact 2.0" in metrics
    assert 'lethe_compactions_total{outcome="completed"} 1.0' in metrics
    assert 'lethe_compaction_duration_seconds_count{outcome="completed"}' in metrics

    # A second compaction makes the rest exact (both jobs of the re-applied request too).
    monkeypatch.setattr(compaction_flows, "compact", real_compact)
    resp = await client.post("/models/m/compact", headers=admin)
    assert resp.status_code == 202, resp.text
    assert train_claimed(compaction_run(db_session, "m").id, store)
    for rid in (*early, *during.values()):
        st = status(db_session, rid)
        assert st["exact"] is True, __import__("json").dumps(st)
    assert db_session.scalar(select(func.count(RequestJob.id))) == 5  # nothing re-applied
    assert verify(db_session)["ok"]


async def test_the_policy_triggers_a_compaction_and_is_validated_and_audited(
    client, api_keys, db_session, partial_model
) -> None:
    store = partial_model
    admin, registry = bearer(api_keys["admin"]), bearer(api_keys["registry"])
    for body, field in (
        ({"max_subtracted_share": 2}, "max_subtracted_share"),
        ({"compact_after_requests": 0}, "compact_after_requests"),
        ({"compact_within_days": "soon"}, "compact_within_days"),
        ({"bogus": 1}, "bogus"),
        ({}, "name at least one"),
    ):
        resp = await client.patch("/models/m/policy", json=body, headers=admin)
        assert resp.status_code == 422, (body, resp.text)
        assert field in resp.text
    assert (await client.patch("/models/m/policy", json={"max_accuracy_drop": 0.5}, headers=registry)).status_code == 403
    assert (await client.patch("/models/nope/policy", json={"max_accuracy_drop": 0.5}, headers=admin)).status_code == 404
    resp = await client.patch(
        "/models/m/policy", json={"compact_after_requests": 2, "max_accuracy_drop": None}, headers=admin
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["compact_after_requests"] == 2 and resp.json()["max_accuracy_drop"] is None
    assert resp.json()["compact_within_days"] == 21  # untouched
    event = db_session.scalar(select(AuditEvent).where(AuditEvent.kind == "model.policy_changed"))
    assert event.payload["before"]["compact_after_requests"] == 100
    assert event.payload["after"]["compact_after_requests"] == 2
    assert event.payload["changed"] == ["compact_after_requests", "max_accuracy_drop"]
    assert event.actor == "test-admin"
    model = (await client.get("/models/m", headers=registry)).json()
    assert model["erasure_policy"]["compact_after_requests"] == 2
    # Set at creation too, with the same bounds; the settings fill in what is not given.
    body = {"dataset": "digits-subjects", "architecture": "mlp", "method": "plain", "epochs": 1}
    bad = await client.post("/models", json={**body, "name": "p1", "erasure_policy": {"max_subtracted_share": 5}}, headers=admin)
    assert bad.status_code == 422 and "max_subtracted_share" in bad.text
    made = await client.post("/models", json={**body, "name": "p2", "erasure_policy": {"compact_within_days": 7}}, headers=admin)
    assert made.status_code == 202, made.text
    assert made.json()["erasure_policy"] == {**made.json()["erasure_policy"], "compact_within_days": 7, "compact_after_requests": 100}

    file_now(subject(1), "m")
    assert work(store) == 1
    assert compaction_run(db_session, "m") is None  # one waiting request: not yet
    health = (await client.get("/models/m/health", headers=registry)).json()
    requests_trigger = next(t for t in health["triggers"] if t["trigger"] == "requests")
    assert requests_trigger == {**requests_trigger, "value": 1, "threshold": 2, "fires": False}
    file_now(subject(2), "m")
    assert work(store) == 1  # ... the second one fires the requests trigger after its job
    run = compaction_run(db_session, "m")
    assert run is not None and run.status == "queued" and run.trigger == "requests"
    queued = db_session.scalar(select(AuditEvent).where(AuditEvent.kind == "model.compaction_queued"))
    assert queued.actor == "policy" and queued.payload["state"]["waiting_requests"] == 2


async def test_a_compaction_that_cannot_run_is_failed_visibly_and_asked_again_later(
    client, api_keys, db_session, partial_model, monkeypatch
) -> None:
    store = partial_model
    file_now(subject(1), "m")
    assert work(store) == 1
    run = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.DEADLINE, actor="policy",
    )
    db_session.commit()
    spec = RunSpec.model_validate(store.get_json("runs/celery-small/run.json"))
    store.delete(spec.samples.key)  # the data the compaction needs is gone
    assert train_claimed(run.id, store) is False

    db_session.expire_all()
    model = db_session.scalar(select(Model).where(Model.name == "m"))
    assert model.status == "ready"  # still serving its old lineage
    health = (await client.get("/models/m/health", headers=bearer(api_keys["registry"]))).json()
    assert health["compaction"]["status"] == "failed" and health["compaction"]["error"]
    assert any("failed" in a for a in health["alerts"])
    assert health["awaiting_exact"]["requests"] == 1
    failed = db_session.scalar(select(AuditEvent).where(AuditEvent.kind == "model.compaction_failed"))
    assert failed is not None and failed.payload["trigger"] == "deadline"
    metrics = (await client.get("/metrics", headers=bearer(api_keys["admin"]))).text
    assert 'lethe_compactions_total{outcome="failed"} 1.0' in metrics
    # ... and on the dashboard, beside the request waiting for exact.
    login = await client.post("/dashboard/login", data={"api_key": api_keys["admin"]})
    assert login.status_code == 303, login.text
    models = (await client.get("/dashboard/models")).text
    assert 'data-awaiting-exact="1"' in models and "1 alert" in models
    page = (await client.get("/dashboard/models/m")).text
    assert "Exact tier" in page and "failed" in page and "data-alert" in page

    # The policy asks again, but not before the retry period.
    monkeypatch.setattr(
        compaction, "policy_of", lambda _stored: CompactionPolicy(compact_after_requests=1)
    )
    assert compaction.schedule_due(session_factory=get_sessionmaker()) == []
    from api.config import get_settings

    monkeypatch.setenv("LETHE_COMPACTION_RETRY_SECONDS", "0")
    get_settings.cache_clear()
    assert len(compaction.schedule_due(session_factory=get_sessionmaker())) == 1


async def test_a_request_on_a_sisa_model_is_exact_at_once(client, api_keys, db_session) -> None:
    from tests.service_fixtures import insert_trained_model
    from unlearning_core.data import load_dataset
    from unlearning_core.runs.spec import DatasetSpec, SisaSpec, TrainingSpec
    from unlearning_core.sisa.run import train_sisa_run

    store = get_store()
    train_sisa_run(
        store, run_id="sisa-small", dataset=load_dataset("digits", subject_size=10),
        dataset_spec=DatasetSpec(spec="digits", subject_size=10), model_name="mlp",
        training=TrainingSpec(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0),
        sisa=SisaSpec(shards=2, slices=1), device=CPU,
    )
    dataset_id = register_digits(db_session)
    insert_trained_model(
        db_session, store=store, dataset_id=dataset_id, name="s", run_id="sisa-small",
        architecture="mlp", method="sisa",
    )
    db_session.commit()
    rid = file_now(subject(5), "s")
    assert work(store) == 1
    st = status(db_session, rid)
    job = st["jobs"][0]
    assert st["exact"] is True and job["guarantee"] == "exact"
    assert job["exact_version"] == 1 and job["approximate_version"] is None
    health = (await client.get("/models/s/health", headers=bearer(api_keys["registry"]))).json()
    assert health["exact_by_construction"] is True and health["awaiting_exact"]["requests"] == 0
    resp = await client.post("/models/s/compact", headers=bearer(api_keys["admin"]))
    assert resp.status_code == 409 and "SISA" in resp.json()["detail"]


def test_the_policy_fires_on_whichever_trigger_comes_first() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 11, 30, tzinfo=UTC)
    policy = CompactionPolicy(max_subtracted_share=0.5)

    def state(**kw: Any) -> LineageState:
        base = {"waiting_requests": 1, "oldest_waiting_at": now, "subtracted_share": 0.1,
                "accuracy_drop": 0.0, "estimated_seconds": 3600.0}
        return LineageState(**{**base, **kw})

    assert due_trigger(policy, state(), now) is None
    assert due_trigger(policy, state(waiting_requests=100), now) == Trigger.REQUESTS
    assert due_trigger(policy, state(subtracted_share=0.5), now) == Trigger.SUBTRACTED_SHARE
    assert due_trigger(policy, state(accuracy_drop=0.021), now) == Trigger.ACCURACY_DROP
    # The deadline fires early enough for two compactions of the estimate and an hour.
    fires = now + timedelta(days=21) - timedelta(hours=3)
    assert due_trigger(policy, state(), fires - timedelta(seconds=1)) is None
    assert due_trigger(policy, state(), fires) == Trigger.DEADLINE
    # Nothing waiting: nothing to make exact, whatever the drift.
    assert due_trigger(policy, state(waiting_requests=0, accuracy_drop=0.5), now) is None
    off = CompactionPolicy(compact_within_days=None, compact_after_requests=None,
                           max_subtracted_share=None, max_accuracy_drop=None)
    assert due_trigger(off, state(waiting_requests=10**6, accuracy_drop=1.0), now + timedelta(days=400)) is None


async def test_kill_9_during_a_compaction_in_a_stream_publishes_one_exact_version(
    client, api_keys, db_session, recorded_runs, workers  # noqa: F811  (workers)
) -> None:
    """Real ``lethe worker`` processes: the one compacting is killed with SIGKILL in the
    middle of its training; requests keep arriving. One exact version is published, none
    of the requests is lost or answered twice, and every job's tier agrees with the
    compaction's stored sample list, whatever the timing."""
    store = get_store()
    copy_run(recorded_runs, store, "celery-big")
    dataset_id = register_digits(db_session)
    register_model(db_session, store, dataset_id, "big", "celery-big")
    # Only the compaction asked below: no trigger may add another (this is about kill -9).
    big = db_session.scalar(select(Model).where(Model.name == "big"))
    big.erasure_policy = dict.fromkeys(CompactionPolicy.model_fields)
    db_session.commit()
    before = file_now(subject(1), "big")
    assert work(store) == 1
    stale = {"LETHE_JOB_STALE_SECONDS": "3"}
    first = workers("w1", **stale)
    resp = await client.post("/models/big/compact", headers=bearer(api_keys["admin"]))
    assert resp.status_code == 202, resp.text
    run_id = compaction_run(db_session, "big").run_id
    deadline = time.monotonic() + 60
    while not store.exists(f"runs/{run_id}/weights/initial.safetensors"):  # training began
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.02)
    first.kill9()
    assert compaction_run(db_session, "big").status == "running"
    workers("w2", **stale)  # their dispatchers find the stale run and queue it again
    workers("w3", **stale)
    during = [file_now(subject(n), "big") for n in (2, 3)]
    deadline = time.monotonic() + 150
    while compaction_run(db_session, "big").status != "completed":
        assert time.monotonic() < deadline, "the compaction never finished after the kill"
        time.sleep(0.2)
    run = compaction_run(db_session, "big")
    assert run.attempts >= 2

    deadline = time.monotonic() + 120
    while True:  # every request completed, every job (re-applied ones too) done
        db_session.expire_all()
        open_jobs = db_session.scalar(
            select(func.count(RequestJob.id)).where(RequestJob.status.in_(["queued", "running"]))
        )
        statuses = [status(db_session, rid) for rid in (before, *during)]
        if not open_jobs and all(s["status"] == "completed" for s in statuses):
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.2)

    assert db_session.scalar(
        select(func.count(AuditEvent.id)).where(AuditEvent.kind == "model.compacted")
    ) == 1
    methods = db_session.scalars(
        select(ModelVersion.method).join(Model).where(Model.name == "big").order_by(ModelVersion.number)
    ).all()
    assert methods.count("compact") == 1
    jobs = db_session.scalars(select(RequestJob)).all()
    published = db_session.scalar(
        select(func.count(AuditEvent.id)).where(AuditEvent.kind == "version.published")
    )
    assert published == sum(1 for j in jobs if (j.details or {}).get("new_version"))
    assert all(j.version_id is not None for j in jobs)  # each answered, once (one column)

    spec = RunSpec.model_validate(store.get_json(f"runs/{run.run_id}/run.json"))
    trained = set(store.get_json(spec.samples.key)["sample_ids"])
    assert status(db_session, before)["exact"] is True
    for job in jobs:  # exact exactly when the compaction never trained on the samples
        assert (job.exact_at is not None) == (not trained & set(job.sample_ids)), job.id
    erased = set(
        db_session.scalars(select(Sample.sample_id).where(Sample.erased_by_request == before))
    )
    assert erased and not trained & erased
    assert verify(db_session)["ok"]


def test_lethe_compact_starts_a_new_lineage_without_the_erased_samples(
    tmp_path, lethe_main, recorded_runs
) -> None:
    import json
    import shutil

    from unlearning_core.store import LocalBlobStore

    root = tmp_path / "store"
    shutil.copytree(recorded_runs, root)
    common = ("--store", str(root), "--device", "cpu")
    erased = lethe_main("unlearn", *common, "--run-id", "celery-small", "--method", "partial-amnesiac",
                        "--forget-subject", subject(7), "--no-evaluate", "--json")
    assert erased.returncode == 0, erased.stderr
    done = lethe_main("compact", *common, "--run-id", "celery-small", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["run_id"] == "celery-small-c2" and result["version"] == 2
    assert result["excluded_samples"] == 10 and result["trigger"] == "manual"
    assert result["subtracted_steps_before"] > 0 and 0 <= result["test_acc"] <= 1

    store = LocalBlobStore(root)
    spec = RunSpec.model_validate(store.get_json("runs/celery-small-c2/run.json"))
    trained = store.get_json(spec.samples.key)
    assert not {s for s, subj in zip(trained["sample_ids"], trained["subject_ids"], strict=True) if subj == subject(7)}
    assert len(trained["sample_ids"]) == result["retained_samples"]
    ledger = store.get_json("runs/celery-small-c2/ledger.json")
    assert ledger["subtracted_steps"] == [] and ledger["versions"][0]["parent"] == 1
    # The new lineage serves the next request fast, numbering on ...
    nxt = lethe_main("unlearn", *common, "--run-id", "celery-small-c2", "--method", "partial-amnesiac",
                     "--forget-subject", subject(8), "--no-evaluate", "--json")
    assert nxt.returncode == 0, nxt.stderr
    assert json.loads(nxt.stdout.strip().splitlines()[-1])["version"] == 3
    # ... and a second compaction keeps the first one's exclusions.
    again = lethe_main("compact", *common, "--run-id", "celery-small-c2", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["run_id"] == "celery-small-c4"
    spec = RunSpec.model_validate(store.get_json("runs/celery-small-c4/run.json"))
    assert len(spec.dataset.exclude_sample_ids) == 20

    missing = lethe_main("compact", *common, "--run-id", "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
    taken = lethe_main("compact", *common, "--run-id", "celery-small", "--new-run-id", "celery-small-c2")
    assert taken.returncode == 2 and "already exists" in taken.stderr


async def test_a_compaction_left_complete_in_the_store_by_a_dead_worker_is_adopted(
    db_session, partial_model
) -> None:
    from unlearning_core.compaction import compact

    store = partial_model
    rid = file_now(subject(1), "m")
    assert work(store) == 1
    run = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    # A worker trained it and died before publishing: the run is complete in the store.
    erased = list(db_session.scalars(select(Sample.sample_id).where(Sample.erased_by_request == rid)))
    compact(store, run_id="celery-small", new_run_id=run.run_id, device=CPU, exclude=erased)
    written = store.get_json(f"runs/{run.run_id}/run.json")
    assert train_claimed(run.id, store)
    assert store.get_json(f"runs/{run.run_id}/run.json") == written  # adopted, not trained again
    version = db_session.scalar(
        select(ModelVersion).join(Model).where(Model.name == "m", ModelVersion.method == "compact")
    )
    assert version.number == 2 and 0 < version.metrics["test_acc"] <= 1
    assert version.metrics["retained_samples"] == len(store.get_json(f"runs/{run.run_id}/samples.json")["sample_ids"])
    assert status(db_session, rid)["exact"] is True


async def test_superseded_versions_are_withdrawn_after_the_grace_period(
    client, api_keys, db_session, partial_model, monkeypatch
) -> None:
    from datetime import timedelta

    from api.config import get_settings
    from api.database.core import utcnow
    from api.registry.models import VersionWithdrawal

    store = partial_model
    registry = bearer(api_keys["registry"])
    rid = file_now(subject(1), "m")
    assert work(store) == 1
    # Within the grace period (24 h by default) version 0 is still served ...
    assert (await client.get("/models/m/versions/0/weights", headers=registry)).status_code == 200
    v0 = (await client.get("/models/m/versions/0", headers=registry)).json()
    assert v0["withdrawn_at"] is None and v0["successor"] == 1 and v0["withdrawn_for"] == [rid]
    assert v0["withdraw_at"] > utcnow().isoformat()
    event = db_session.scalar(select(AuditEvent).where(AuditEvent.kind == "version.withdrawal_scheduled"))
    assert event.payload["versions"] == [0] and event.payload["successor"] == 1

    # ... and 410 once it is over, with the successor's link; latest is the successor.
    db_session.execute(
        VersionWithdrawal.__table__.update().values(effective_at=utcnow() - timedelta(seconds=1))
    )
    db_session.commit()
    gone = await client.get("/models/m/versions/0/weights", headers=registry)
    assert gone.status_code == 410 and gone.headers["link"] == '</models/m/versions/1>; rel="successor-version"'
    assert "withdrawn" in gone.json()["detail"]
    assert (await client.head("/models/m/versions/0/weights", headers=registry)).status_code == 410
    assert (await client.get("/models/m/versions/latest/weights", headers=registry)).status_code == 200
    listed = (await client.get("/models/m/versions", headers=registry)).json()
    assert listed[0]["withdrawn_at"] is not None and listed[1]["withdrawn_at"] is None
    # Another tenant's registry client finds no such model at all.
    from api.auth.service import create_key

    _row, globex = create_key(db_session, name="globex-registry", scopes=["registry"], tenant="globex")
    db_session.commit()
    assert (await client.get("/models/m/versions", headers=bearer(globex))).status_code == 404

    # With no grace, a compaction withdraws the whole earlier lineage at once.
    monkeypatch.setenv("LETHE_WITHDRAW_GRACE_HOURS", "0")
    get_settings.cache_clear()
    file_now(subject(2), "m")
    assert work(store) == 1  # v2; v1 withdrawn at once
    assert (await client.get("/models/m/versions/1/weights", headers=registry)).status_code == 410
    run = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    assert train_claimed(run.id, store)
    for n in (0, 1, 2):
        resp = await client.get(f"/models/m/versions/{n}/weights", headers=registry)
        assert resp.status_code == 410, n
    assert (await client.get("/models/m/versions/2", headers=registry)).json()["successor"] == 3
    latest = await client.get("/models/m/versions/latest/weights", headers=registry)
    assert latest.status_code == 200 and latest.headers["x-lethe-version"] == "3"


async def test_a_request_completed_while_a_model_trains_reaches_it(
    client, api_keys, db_session, partial_model, monkeypatch
) -> None:
    """No escape through training: the new model publishes version 0, gets the request's
    erasure job at once, stays ``training`` (not served) until it is done, and its version
    0 is withdrawn without grace."""
    from api.registry import flows as registry_flows

    store = partial_model
    admin, registry = bearer(api_keys["admin"]), bearer(api_keys["registry"])
    body = {"name": "n", "dataset": "digits-subjects", "architecture": "mlp",
            "method": "partial-amnesiac", "epochs": 1, "batch_size": 32}
    assert (await client.post("/models", json=body, headers=admin)).status_code == 202
    run_pk = db_session.scalar(select(TrainingRun.id).join(Model).where(Model.name == "n"))
    filed: list[str] = []
    real_train = registry_flows.pipeline.train

    def train_while_a_request_completes(*args: Any, **kwargs: Any) -> dict[str, Any]:
        filed.append(file_now(subject(6), "m"))  # only m is ready: it alone is targeted
        assert work(store) == 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr(registry_flows.pipeline, "train", train_while_a_request_completes)
    assert train_claimed(run_pk, store)
    db_session.expire_all()
    assert db_session.scalar(select(Model.status).where(Model.name == "n")) == "training"
    st = status(db_session, filed[0])
    assert st["status"] == "completed" and [j["model"] for j in st["jobs"]] == ["m", "n"]
    assert st["jobs"][1]["status"] == "queued"
    held = await client.get("/models/n/versions/0/weights", headers=registry)
    assert held.status_code == 409 and "training" in held.json()["detail"]

    assert work(store) == 1
    db_session.expire_all()
    assert db_session.scalar(select(Model.status).where(Model.name == "n")) == "ready"
    st = status(db_session, filed[0])
    assert st["jobs"][1]["status"] == "completed" and st["jobs"][1]["approximate_version"] == 1
    gone = await client.get("/models/n/versions/0/weights", headers=registry)
    assert gone.status_code == 410 and 'versions/1>; rel="successor-version"' in gone.headers["link"]
    assert (await client.get("/models/n/versions/latest/weights", headers=registry)).status_code == 200
    kinds = [e.kind for e in db_session.scalars(
        select(AuditEvent).where(AuditEvent.model_name == "n").order_by(AuditEvent.seq)
    )]
    assert kinds.index("model.trained") < kinds.index("job.added") < kinds.index("model.ready")
    assert verify(db_session)["ok"]
