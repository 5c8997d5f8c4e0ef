"""The purge: blobs that still hold erased data go once nothing needs them (real
PostgreSQL and blob store; the recorded digits run of conftest's ``recorded_runs``)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from api.audit.models import AuditEvent
from api.audit.service import verify
from api.compaction import service as compaction
from api.config import get_settings
from api.database.core import get_sessionmaker
from api.purge.models import PurgedBlob
from api.purge.service import sweep
from api.registry.models import Model, ModelVersion, TrainingRun
from tests.conftest import bearer
from tests.test_compaction import file_now, partial_model, subject, train_claimed, work  # noqa: F401
from unlearning_core.artifacts import open_artifact
from unlearning_core.compaction import Trigger

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


def purge() -> int:
    return sweep(session_factory=get_sessionmaker())


def rows(db, reason: str | None = None) -> list[PurgedBlob]:  # type: ignore[no-untyped-def]
    db.expire_all()
    query = select(PurgedBlob).order_by(PurgedBlob.id)
    if reason is not None:
        query = query.where(PurgedBlob.reason == reason)
    return list(db.scalars(query))


def versions(db) -> dict[int, ModelVersion]:  # type: ignore[no-untyped-def]
    db.expire_all()
    return {v.number: v for v in db.scalars(select(ModelVersion).join(Model).where(Model.name == "m"))}


async def test_purge_deletes_what_holds_erased_data_and_keeps_what_is_needed(
    db_session, partial_model, monkeypatch  # noqa: F811
) -> None:
    store = partial_model
    monkeypatch.setenv("LETHE_WITHDRAW_GRACE_HOURS", "0")
    get_settings.cache_clear()
    for n in (1, 2):
        file_now(subject(n), "m")
    assert work(store) == 2
    run = open_artifact(store, "celery-small")
    ledger = db_session.scalar(select(TrainingRun.ledger).where(TrainingRun.run_id == "celery-small"))
    subtracted = ledger["subtracted_steps"]
    kept_steps = [s for s in range(len(run.update_blobs)) if s not in set(subtracted)]
    assert subtracted and kept_steps
    # A sweep killed after deleting a blob, before recording it: the next one records it.
    store.delete(run.update_blobs[subtracted[0]].key)

    gone = purge()
    steps = rows(db_session, "subtracted-step")
    assert sorted(r.key for r in steps) == sorted(run.update_blobs[s].key for s in subtracted)
    assert all(r.sha256 and r.size for r in steps)  # known from the run's pointers
    assert not any(store.exists(r.key) for r in steps)
    assert all(store.exists(run.update_blobs[s].key) for s in kept_steps)  # future erasures
    v = versions(db_session)
    withdrawn = {r.key for r in rows(db_session, "withdrawn-version")}
    assert withdrawn == {v[1].weights_key, v[1].report_key}
    assert not store.exists(v[1].weights_key) and not store.exists(v[1].report_key)
    assert store.exists(v[0].weights_key)  # the lineage's reference for later metrics
    assert store.exists(v[2].weights_key) and store.exists(v[2].report_key)  # the head
    assert gone == len(steps) + 2
    event = db_session.scalar(select(AuditEvent).where(AuditEvent.kind == "blobs.deleted"))
    assert event.payload["counts"] == {"subtracted-step": len(steps), "withdrawn-version": 2}
    assert {b["key"] for b in event.payload["blobs"]} >= withdrawn
    assert purge() == 0  # idempotent: nothing twice

    # A later erasure works from what is left (its metrics need v0 and unsubtracted steps).
    file_now(subject(3), "m")
    assert work(store) == 1
    assert versions(db_session)[3].metrics["forget_acc"] is not None
    assert purge() > 0

    # After a compaction, the whole replaced lineage goes, run.json last.
    run_row = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    assert train_claimed(run_row.id, store)
    purge()
    assert store.list("runs/celery-small/") == []
    replaced = rows(db_session, "replaced-lineage")
    assert replaced[-1].key == "runs/celery-small/run.json"
    new = versions(db_session)[4]
    assert new.method == "compact" and store.exists(new.weights_key)
    assert purge() == 0
    file_now(subject(4), "m")
    assert work(store) == 1  # the new lineage serves on
    assert verify(db_session)["ok"]


async def test_nothing_is_purged_within_the_grace_period(db_session, partial_model) -> None:  # noqa: F811
    store = partial_model
    file_now(subject(1), "m")
    assert work(store) == 1
    gone = purge()
    assert {r.reason for r in rows(db_session)} == {"subtracted-step"} and gone == len(rows(db_session))
    v = versions(db_session)
    assert store.exists(v[0].weights_key)


async def test_the_residual_scan_flags_each_kind_until_the_purge(
    client, api_keys, db_session, partial_model, monkeypatch, lethe_main  # noqa: F811
) -> None:
    import json

    import api.cli  # noqa: F401  (adds the service commands, audit residuals among them)
    from api.registry.models import VersionWithdrawal

    store = partial_model
    admin = bearer(api_keys["admin"])
    monkeypatch.setenv("LETHE_WITHDRAW_GRACE_HOURS", "0")
    monkeypatch.setenv("LETHE_COMPACT_WITHIN_DAYS", "")  # no deadline: the reference may stay
    get_settings.cache_clear()
    for n in (1, 2):
        file_now(subject(n), "m")
    assert work(store) == 2
    # Plant a version that was never withdrawn (as if published before withdrawals existed).
    v = versions(db_session)
    db_session.execute(VersionWithdrawal.__table__.delete().where(VersionWithdrawal.version_id == v[1].id))
    db_session.commit()
    found = (await client.get("/admin/residuals", headers=admin)).json()["residuals"]
    kinds = {(r["kind"], r["key"]) for r in found}
    ledger = db_session.scalar(select(TrainingRun.ledger).where(TrainingRun.run_id == "celery-small"))
    run = open_artifact(store, "celery-small")
    assert ("version-not-withdrawn", v[1].weights_key) in kinds
    assert {("subtracted-step-update", run.update_blobs[s].key) for s in ledger["subtracted_steps"]} <= kinds
    assert ("withdrawn-version-blob", v[0].weights_key) not in kinds  # the reference, no deadline
    cli = lethe_main("audit", "residuals", "--json")
    assert cli.returncode == 1 and json.loads(cli.stdout.strip().splitlines()[-1])["count"] == len(found)

    purge()
    left = (await client.get("/admin/residuals", headers=admin)).json()["residuals"]
    assert [r["kind"] for r in left] == ["version-not-withdrawn"]  # no purge fixes a missing withdrawal

    # A replaced lineage still stored is flagged by its run.json until the purge.
    run_row = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    assert train_claimed(run_row.id, store)
    found = (await client.get("/admin/residuals", headers=admin)).json()["residuals"]
    assert ("replaced-lineage", "runs/celery-small/run.json") in {(r["kind"], r["key"]) for r in found}
    purge()
    assert (await client.get("/admin/residuals", headers=admin)).json()["count"] == 0
    assert lethe_main("audit", "residuals").returncode == 0


async def test_superseded_sisa_checkpoints_are_purged_and_the_ensemble_serves_on(
    client, api_keys, db_session
) -> None:
    from api.blobs import get_store
    from tests.service_fixtures import insert_digits_dataset, insert_trained_model
    from unlearning_core.data import load_dataset
    from unlearning_core.runs.spec import DatasetSpec, SisaSpec, TrainingSpec
    from unlearning_core.sisa.run import train_sisa_run
    import torch

    store = get_store()
    train_sisa_run(
        store, run_id="sisa-purge", dataset=load_dataset("digits", subject_size=10),
        dataset_spec=DatasetSpec(spec="digits", subject_size=10), model_name="mlp",
        training=TrainingSpec(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0),
        sisa=SisaSpec(shards=2, slices=3), device=torch.device("cpu"),
    )
    dataset = insert_digits_dataset(db_session)
    insert_trained_model(db_session, store=store, dataset_id=dataset.id, name="s", run_id="sisa-purge",
                         architecture="mlp", method="sisa")
    db_session.commit()
    before = set(store.list("runs/sisa-purge/shards/"))
    file_now(subject(7), "s")
    assert work(store) == 1
    ledger = db_session.scalar(select(TrainingRun.ledger).where(TrainingRun.run_id == "sisa-purge"))
    referenced = {p["key"] for pointers in ledger["checkpoints"].values() for p in pointers}
    superseded = {k for k in store.list("runs/sisa-purge/shards/") if k.endswith(".safetensors")} - referenced
    assert superseded and superseded <= before  # the retrained shard's later slices

    found = (await client.get("/admin/residuals", headers=bearer(api_keys["admin"]))).json()["residuals"]
    assert superseded <= {r["key"] for r in found if r["kind"] == "superseded-checkpoint"}
    purge()
    assert {r.key for r in rows(db_session, "superseded-checkpoint")} == superseded
    assert not any(store.exists(k) for k in superseded)
    assert all(store.exists(k) for k in referenced)
    file_now(subject(8), "s")
    assert work(store) == 1  # the next erasure retrains from what is kept
    db_session.expire_all()
    assert db_session.scalar(select(Model.status).where(Model.name == "s")) == "ready"
    numbers = db_session.scalars(
        select(ModelVersion.number).join(Model).where(Model.name == "s").order_by(ModelVersion.number)
    ).all()
    assert numbers == [0, 1, 2]


async def test_kill_9_during_a_purge_resumes_without_deleting_twice_or_leaving_anything(
    db_session, api_keys, recorded_runs, s3_settings, monkeypatch
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from api.blobs import get_store
    from tests.conftest import _drop_bucket
    from tests.test_celery_workers import copy_run, register_digits, register_model, subject_ids
    from tests.test_compaction import requester
    from api.erasure import service as erasure
    from api.erasure.schemas import ErasureRequestCreate

    bucket = f"lethe-purge-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("LETHE_BLOB_STORE", f"s3://{bucket}/blobs")
    monkeypatch.setenv("LETHE_S3_ENDPOINT", s3_settings.endpoint)
    get_settings.cache_clear()
    get_store.cache_clear()
    store = get_store()
    try:
        copy_run(recorded_runs, store, "celery-big")
        register_model(db_session, store, register_digits(db_session), "big", "celery-big")
        with get_sessionmaker()() as db:  # 400 samples: nearly every recorded step
            erasure.create(db=db, principal=requester(db), idempotency_key=None,
                           body=ErasureRequestCreate(sample_ids=subject_ids(0, 40), models=["big"]))
        assert work(store) == 1
        ledger = db_session.scalar(select(TrainingRun.ledger).where(TrainingRun.run_id == "celery-big"))
        blobs = open_artifact(store, "celery-big").update_blobs
        doomed = [blobs[s].key for s in ledger["subtracted_steps"]]
        assert len(doomed) > 300

        code = ("from api.database.core import get_sessionmaker; from api.purge.service import sweep; "
                "sweep(session_factory=get_sessionmaker())")
        proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), start_new_session=True)
        deadline = time.monotonic() + 60
        while store.exists(doomed[10]):  # some are gone: it is in the middle of the sweep
            assert time.monotonic() < deadline and proc.poll() is None, "the sweep ended or never began"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = [k for k in doomed if store.exists(k)]
        assert 0 < len(left) < len(doomed)  # killed half-way
        assert rows(db_session) == []  # nothing recorded: its transaction died with it

        assert purge() == len(doomed)  # the next sweep records every one, deletes the rest
        recorded = [r.key for r in rows(db_session, "subtracted-step")]
        assert sorted(recorded) == sorted(doomed) and len(set(recorded)) == len(recorded)
        assert not any(store.exists(k) for k in doomed)
        assert all(r.sha256 for r in rows(db_session))
        assert purge() == 0
    finally:
        _drop_bucket(store)
        get_store.cache_clear()
