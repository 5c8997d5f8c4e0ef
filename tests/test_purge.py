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
    import torch

    from api.blobs import get_store
    from tests.service_fixtures import insert_digits_dataset, insert_trained_model
    from unlearning_core.data import load_dataset
    from unlearning_core.runs.spec import DatasetSpec, SisaSpec, TrainingSpec
    from unlearning_core.sisa.run import train_sisa_run

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
    from api.erasure import service as erasure
    from api.erasure.schemas import ErasureRequestCreate
    from tests.conftest import _drop_bucket
    from tests.test_celery_workers import copy_run, register_digits, register_model, subject_ids
    from tests.test_compaction import requester

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


# ---------------------------------------------------------------------------------------
# Failing deletes: a real HTTP endpoint in front of the test S3 server
# ---------------------------------------------------------------------------------------

def fast_retry():  # type: ignore[no-untyped-def]
    """Short pauses (the test's store has no urllib3 retries either: LETHE_S3_RETRIES=0)."""
    from api.purge.deletion import RetryPolicy

    return RetryPolicy(attempts=3, first_pause_s=0.05, step_s=0.05, max_pause_s=0.1)


class FaultyS3Endpoint:
    """An HTTP server that forwards every request to the test S3 server, except that it
    answers ``503 ServiceUnavailable`` to the next ``fail_deletes`` DELETE requests (every
    one while it is ``float("inf")``). Stopping it closes the port: the endpoint is then
    unreachable, as a server that went down."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, _, up_port = upstream.rpartition(":")
        endpoint = self
        self.fail_deletes: float = 0
        self.failed = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                # one request per connection: once stopped, nothing is served on a kept-alive one
                self.close_connection = True
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "DELETE" and endpoint.take_failure():
                    error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable'
                             b"</Code><Message>injected by the test</Message></Error>")
                    self.send_response(503)
                    self.send_header("Connection", "close")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                conn = http.client.HTTPConnection(host, int(up_port), timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                self.send_header("Connection", "close")
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                # HEAD answers carry the object's length, with no body
                self.send_header("Content-Length", resp.getheader("Content-Length", "0")
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 128  # the run is copied in by 16 threads at once

        self._server = Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        import threading

        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take_failure(self) -> bool:
        if self.fail_deletes <= 0:
            return False
        self.fail_deletes -= 1
        self.failed += 1
        return True

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def failure_events(db) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.kind == "purge.failed").order_by(AuditEvent.seq)))


def purge_failures(reason: str) -> float:
    from api.observability.metrics import PROCESS_REGISTRY

    return PROCESS_REGISTRY.get_sample_value("lethe_purge_failures_total", {"reason": reason}) or 0.0


def subtracted_keys(db, store, run_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    db.expire_all()
    ledger = db.scalar(select(TrainingRun.ledger).where(TrainingRun.run_id == run_id))
    blobs = open_artifact(store, run_id).update_blobs
    return [blobs[s].key for s in ledger["subtracted_steps"]]


async def test_failing_s3_deletes_are_retried_recorded_and_left_to_the_next_sweep(
    db_session, api_keys, recorded_runs, s3_settings, monkeypatch
) -> None:
    """Model ``m`` lives in a bucket reached through an endpoint that can answer 503 or go
    away; model ``big`` in the local store. A transient failure is retried away; a lasting
    one is recorded (``purge.failed``, the counter), leaves the blob listed by the residual
    scan and the other model purged, and the next sweep deletes it."""
    import uuid

    from api.blobs import get_store
    from api.purge.residuals import scan
    from tests.test_celery_workers import copy_run, register_digits, register_model
    from tests.test_store import drop_versioned_bucket

    local = get_store()
    proxy = FaultyS3Endpoint(s3_settings.endpoint)
    monkeypatch.setenv("LETHE_S3_ENDPOINT", proxy.endpoint)
    monkeypatch.setenv("LETHE_S3_RETRIES", "0")
    monkeypatch.setenv("LETHE_S3_CONNECT_TIMEOUT_S", "1")
    get_settings.cache_clear()
    get_store.cache_clear()
    remote = get_store(f"s3://lethe-purge-{uuid.uuid4().hex[:12]}/blobs")
    try:
        copy_run(recorded_runs, remote, "celery-small")
        copy_run(recorded_runs, local, "celery-big")
        digits = register_digits(db_session)
        register_model(db_session, remote, digits, "m", "celery-small")  # swept first
        register_model(db_session, local, digits, "big", "celery-big")
        for model in ("m", "big"):
            file_now(subject(1), model)
        assert work(local) == 2

        # Transient: the first two DELETEs answer 503, the retries get through.
        proxy.fail_deletes = 2
        before = purge_failures("subtracted-step")
        gone = sweep(session_factory=get_sessionmaker(), retry=fast_retry())
        assert proxy.failed == 2 and failure_events(db_session) == []
        assert purge_failures("subtracted-step") == before
        assert gone == len(subtracted_keys(db_session, remote, "celery-small")) + len(
            subtracted_keys(db_session, local, "celery-big"))

        # Lasting: every DELETE of m's store fails; big is purged all the same.
        for model in ("m", "big"):
            file_now(subject(2), model)
        assert work(local) == 2
        recorded = {r.key for r in rows(db_session)}
        doomed_m = [k for k in subtracted_keys(db_session, remote, "celery-small") if k not in recorded]
        doomed_big = [k for k in subtracted_keys(db_session, local, "celery-big") if k not in recorded]
        assert doomed_m and doomed_big
        proxy.fail_deletes = float("inf")
        gone = sweep(session_factory=get_sessionmaker(), retry=fast_retry())
        assert gone == len(doomed_big) and not any(local.exists(k) for k in doomed_big)
        [event] = failure_events(db_session)
        assert event.model_name == "m" and event.actor == "purge"
        [failed] = event.payload["failed"]
        assert failed["key"] in doomed_m and failed["reason"] == "subtracted-step"
        assert "503" in failed["error"] and proxy.endpoint in failed["error"]
        assert event.payload["not_tried"] == len(doomed_m) - 1  # the store is down: the rest waits
        assert purge_failures("subtracted-step") == before + 1
        assert not any(r.key in doomed_m for r in rows(db_session))  # nothing claimed deleted
        assert all(remote.exists(k) for k in doomed_m)
        found = {(r["kind"], r["key"]) for r in scan(db=db_session)}
        assert {("subtracted-step-update", k) for k in doomed_m} <= found

        # The endpoint recovers: the next sweep deletes and records the rest.
        proxy.fail_deletes = 0
        assert sweep(session_factory=get_sessionmaker(), retry=fast_retry()) == len(doomed_m)
        assert not any(remote.exists(k) for k in doomed_m)
        assert {k for k in doomed_m} <= {r.key for r in rows(db_session, "subtracted-step")}
        assert not any(r["kind"] == "subtracted-step-update" for r in scan(db=db_session))

        # Unreachable (the port closed): the plan itself cannot read the store; recorded,
        # the sweep goes on, and it is all done once the endpoint is back.
        file_now(subject(3), "m")
        assert work(local) == 1
        port = proxy.port
        proxy.stop()
        assert sweep(session_factory=get_sessionmaker(), retry=fast_retry()) == 0
        plan_failure = failure_events(db_session)[-1]
        assert plan_failure.model_name == "m" and plan_failure.payload["failed"][0]["reason"] == "plan"
        assert "unreachable" in plan_failure.payload["failed"][0]["error"]
        proxy = FaultyS3Endpoint(s3_settings.endpoint, port)
        assert sweep(session_factory=get_sessionmaker(), retry=fast_retry()) > 0
        assert not any(r["kind"] == "subtracted-step-update" for r in scan(db=db_session))
        assert verify(db_session)["ok"]
    finally:
        proxy.stop()
        monkeypatch.setenv("LETHE_S3_ENDPOINT", s3_settings.endpoint)
        get_settings.cache_clear()
        get_store.cache_clear()
        drop_versioned_bucket(get_store(remote.url))
        get_store.cache_clear()


async def test_purge_on_a_versioned_bucket_leaves_no_version_of_a_key(
    db_session, api_keys, recorded_runs, s3_settings, monkeypatch
) -> None:
    import uuid

    from minio.versioningconfig import ENABLED, VersioningConfig

    from api.blobs import get_store
    from tests.test_celery_workers import copy_run, register_digits, register_model
    from tests.test_store import drop_versioned_bucket, object_versions

    monkeypatch.setenv("LETHE_WITHDRAW_GRACE_HOURS", "0")
    monkeypatch.setenv("LETHE_S3_ENDPOINT", s3_settings.endpoint)
    get_settings.cache_clear()
    get_store.cache_clear()
    store = get_store(f"s3://lethe-purge-{uuid.uuid4().hex[:12]}/blobs")
    try:
        store.put("seed", b"creates the bucket")
        store.client.set_bucket_versioning(store.bucket, VersioningConfig(ENABLED))
        copy_run(recorded_runs, store, "celery-small")
        register_model(db_session, store, register_digits(db_session), "m", "celery-small")
        file_now(subject(1), "m")
        assert work(store) == 1
        doomed = subtracted_keys(db_session, store, "celery-small")
        store.put(doomed[0], store.get(doomed[0]))  # a second version of one of them
        assert len(object_versions(store, doomed[0])) == 2

        assert purge() > 0
        deleted = [r.key for r in rows(db_session)]
        assert set(doomed) <= set(deleted)
        assert all(object_versions(store, k) == [] for k in deleted)  # no version, no marker
        assert store.exists("runs/celery-small/run.json")
    finally:
        drop_versioned_bucket(store)
        get_store.cache_clear()


# ---------------------------------------------------------------------------------------
# Uploads: erased samples leave the stored manifest
# ---------------------------------------------------------------------------------------


def digits_upload(db, name: str = "up"):  # type: ignore[no-untyped-def]
    """The digits as an uploaded manifest (``POST /datasets/upload``), subjects of ten
    consecutive training samples, with one array the loader never reads."""
    import io

    import numpy as np
    from sklearn.datasets import load_digits

    from api.datasets import service as datasets

    digits = load_digits()
    n = len(digits.target)
    buf = io.BytesIO()
    np.savez(
        buf,
        images=np.round(digits.images / 16 * 255).astype(np.uint8),
        labels=digits.target.astype(np.int64),
        sample_ids=np.asarray([f"u{i:04d}" for i in range(n)]),
        notes=np.asarray([f"free text about image {i}" for i in range(n)]),
    )
    buf.seek(0)
    return datasets.register_upload(db=db, name=name, fileobj=buf, subject_size=10,
                                    filename="digits.npz", tenant="acme")


def upload_model(db, store, dataset) -> None:  # type: ignore[no-untyped-def]
    """Model ``u``: a partial-amnesiac MLP recorded on the upload, as training leaves it."""
    import torch

    from tests.service_fixtures import insert_trained_model
    from unlearning_core.data import load_dataset
    from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
    from unlearning_core.runs.train import train_run

    train_run(
        store, run_id="up-small", dataset=load_dataset(dataset.source, subject_size=10),
        dataset_spec=DatasetSpec(spec=dataset.source, subject_size=10), model_name="mlp",
        training=TrainingSpec(epochs=2, batch_size=32, lr=0.02, momentum=0.9, weight_decay=0.0, seed=0),
        recording=RecordingSpec(mode="partial", prune_first=0.95, prune_last=0.3),
        device=torch.device("cpu"),
    )
    insert_trained_model(db, store=store, dataset_id=dataset.id, name="u", run_id="up-small",
                         architecture="mlp", method="partial-amnesiac")
    db.commit()


def erased_of(db, dataset_id: int) -> set[str]:  # type: ignore[no-untyped-def]
    from api.datasets.models import Sample

    db.expire_all()
    return set(db.scalars(select(Sample.sample_id).where(Sample.dataset_id == dataset_id,
                                                          Sample.erased_at.is_not(None))))


def upload_events(db, kind: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.seq)))


def file_sha(path) -> str:  # type: ignore[no-untyped-def]
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_erased_samples_leave_the_upload_and_every_later_use_still_works(db_session, api_keys) -> None:
    from pathlib import Path

    import numpy as np
    import torch

    from api.blobs import get_store
    from api.datasets.models import Dataset
    from api.datasets.service import sample_ids_digest
    from api.erasure.models import ErasureRequest, RequestJob
    from api.purge import redact, uploads
    from api.purge.residuals import scan
    from api.receipts.service import build
    from unlearning_core.data import load_dataset

    store = get_store()
    dataset = digits_upload(db_session)
    path = Path(dataset.source)
    received = dataset.info["upload"]["sha256"]
    before = load_dataset(dataset.source, subject_size=10)
    upload_model(db_session, store, dataset)
    rid = file_now(subject(1), "u")
    assert work(store) == 1
    erased = erased_of(db_session, dataset.id)
    assert len(erased) == 10

    # Held while an erasure may still evaluate them, or while a model of the dataset trains.
    job = db_session.scalar(select(RequestJob).where(RequestJob.request_id == rid))
    late = RequestJob(request_id=rid, model_id=job.model_id, method=job.method, status="queued",
                      sample_ids=list(job.sample_ids), reapplies_job_id=job.id, details={})
    db_session.add(late)
    db_session.commit()
    held = uploads.plan(db=db_session, dataset=dataset)
    assert held.pending == () and held.held == 10 and "open erasure jobs" in held.why_held
    purge()
    assert file_sha(path) == received and not [r for r in scan(db=db_session) if r["kind"] == "erased-sample-data"]
    late.status = "cancelled"
    training = TrainingRun(model_id=job.model_id, run_id="up-training", store_url=store.url,
                           method="partial-amnesiac", config={}, status="queued")
    db_session.add(training)
    db_session.commit()
    assert uploads.plan(db=db_session, dataset=dataset).why_held == "a model of the dataset is training"
    db_session.delete(training)
    db_session.commit()

    [flag] = [r for r in scan(db=db_session) if r["kind"] == "erased-sample-data"]
    assert (flag["key"], flag["dataset"], flag["samples"]) == (dataset.source, "up", 10)

    assert purge() >= 1
    db_session.expire_all()
    dataset = db_session.get(Dataset, dataset.id)
    upload = dataset.info["upload"]
    assert dataset.source == str(path)  # in place: every run.json still names it
    assert upload["sha256"] == file_sha(path) != received and upload["received_sha256"] == received
    assert upload["size"] == path.stat().st_size and upload["erased_samples"] == 10
    assert redact.erased_ids(path) == erased
    with np.load(path) as npz:
        assert "notes" not in npz.files  # the loader never read it; it could describe them
    after = load_dataset(dataset.source, subject_size=10)
    assert after.train.sample_ids == before.train.sample_ids  # ids, order, positions
    assert torch.equal(after.train.labels, before.train.labels)
    assert after.train.subject_ids == before.train.subject_ids  # subject_size: by position
    assert after.test.sample_ids == before.test.sample_ids  # the same split
    assert torch.equal(after.test.images, before.test.images)
    gone = before.train.positions_of(sorted(erased))
    kept = np.setdiff1d(np.arange(len(before.train)), gone)
    assert torch.all(after.train.images[gone] == -1)  # black: pixel 0, normalised
    assert not torch.all(before.train.images[gone] == -1)
    assert torch.equal(after.train.images[kept], before.train.images[kept])
    [started] = upload_events(db_session, uploads.STARTED)
    [rewritten] = upload_events(db_session, uploads.REWRITTEN)
    assert rewritten.payload["from_sha256"] == received == started.payload["from_sha256"]
    assert rewritten.payload["to_sha256"] == upload["sha256"]
    assert rewritten.payload["request_ids"] == [rid] and rewritten.payload["samples"] == 10
    assert rewritten.payload["dropped_arrays"] == ["notes"] and not rewritten.payload["resumed"]
    assert not [r for r in scan(db=db_session) if r["kind"] == "erased-sample-data"]
    assert purge() == 0 and file_sha(path) == upload["sha256"]  # nothing twice

    receipt = build(db=db_session, request=db_session.get(ErasureRequest, rid))
    [data] = receipt.data
    assert data.kind == "upload" and data.raw_data_deleted and not data.owner_duty
    assert "overwrote these samples' images" in data.note
    [done] = receipt.purge.uploads_rewritten
    assert (done.sha256_before, done.sha256_after, done.samples_removed) == (received, upload["sha256"], 10)
    assert not any(x.kind == "erased-sample-data" for x in receipt.purge.remaining)

    # Every later use: the lineage erases again (its run reloads the file and checks ids
    # and labels), a new training sees the registered samples, a compaction leaves out all.
    rid2 = file_now(subject(2), "u")
    assert work(store) == 1
    db_session.expire_all()
    assert db_session.get(ErasureRequest, rid2).status == "completed"
    assert purge() >= 1
    erased = erased_of(db_session, dataset.id)
    assert len(erased) == 20 and redact.erased_ids(path) == erased
    assert sample_ids_digest(load_dataset(dataset.source, subject_size=10).train.sample_ids) == \
        dataset.info["sample_ids_sha256"]
    run_row = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "u")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    assert train_claimed(run_row.id, store)
    db_session.expire_all()
    new_run = db_session.get(TrainingRun, run_row.id)
    trained = open_artifact(store, new_run.run_id).sample_table["sample_ids"]
    assert trained == [s for s in before.train.sample_ids if s not in erased]
    assert verify(db_session)["ok"]


async def test_kill_9_while_an_upload_is_rewritten_finishes_on_the_next_sweep(db_session, api_keys) -> None:
    """Killed after the intent, before the file is replaced: the next sweep starts over.
    Killed after the file is replaced, before the commit: the next sweep records that
    rewrite (no second one). Never both contents lost, nothing written twice."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from api.blobs import get_store
    from api.datasets.models import Dataset
    from api.purge import redact, uploads
    from api.purge.residuals import scan

    store = get_store()
    dataset = digits_upload(db_session)
    path = Path(dataset.source)
    received = dataset.info["upload"]["sha256"]
    upload_model(db_session, store, dataset)

    def killed_at(step: str) -> None:
        code = ("import os, signal; import api.purge.uploads as u; "
                f"u.{step} = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
                "from api.database.core import get_sessionmaker; from api.purge.service import sweep; "
                "sweep(session_factory=get_sessionmaker())")
        proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), timeout=120, check=False)
        assert proc.returncode == -9

    file_now(subject(1), "u")
    assert work(store) == 1
    killed_at("_replace")  # intent committed, the new file written beside, not moved in
    [started] = upload_events(db_session, uploads.STARTED)
    assert upload_events(db_session, uploads.REWRITTEN) == []
    assert file_sha(path) == received and path.with_name(f".{path.name}.purge").exists()
    assert purge() >= 1
    assert len(upload_events(db_session, uploads.STARTED)) == 2  # it started over
    [rewritten] = upload_events(db_session, uploads.REWRITTEN)
    assert not rewritten.payload["resumed"] and file_sha(path) == rewritten.payload["to_sha256"]
    assert not path.with_name(f".{path.name}.purge").exists()

    file_now(subject(2), "u")
    assert work(store) == 1
    killed_at("_record")  # the file replaced, the commit never made
    started = upload_events(db_session, uploads.STARTED)[-1]
    assert len(upload_events(db_session, uploads.STARTED)) == 3
    assert len(upload_events(db_session, uploads.REWRITTEN)) == 1
    new_bytes = file_sha(path)
    assert new_bytes == started.payload["to_sha256"]
    db_session.expire_all()
    assert db_session.get(Dataset, dataset.id).info["upload"]["sha256"] == rewritten.payload["to_sha256"]
    [flag] = [r for r in scan(db=db_session) if r["kind"] == "erased-sample-data"]
    assert "not the" in flag["error"]  # what it holds is not what the database says yet
    assert purge() >= 1
    assert len(upload_events(db_session, uploads.STARTED)) == 3  # no second rewrite
    resumed = upload_events(db_session, uploads.REWRITTEN)[-1]
    assert resumed.payload["resumed"] and resumed.payload["to_sha256"] == new_bytes == file_sha(path)
    db_session.expire_all()
    upload = db_session.get(Dataset, dataset.id).info["upload"]
    assert upload["sha256"] == new_bytes and upload["erased_samples"] == 20
    assert redact.erased_ids(path) == erased_of(db_session, dataset.id)
    assert not [r for r in scan(db=db_session) if r["kind"] == "erased-sample-data"]
    assert purge() == 0 and file_sha(path) == new_bytes
