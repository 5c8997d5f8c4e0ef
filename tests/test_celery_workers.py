"""Distributed workers: real ``lethe worker`` processes (Celery, solo pool) on the real Redis
(a dedicated database, flushed per test), PostgreSQL and, where it matters, the S3 server.

The fault tests print one line each (run with ``-s``)::

    FAULT-TEST <name>: sent=N completed=N duplicates=N lost=N ...

``duplicates`` counts versions published beyond one per job that changed the model (and
jobs answered by more than one version); ``lost`` counts requests not completed in time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from api.audit.models import AuditEvent
from api.audit.service import verify
from api.database.core import utcnow
from api.erasure.models import RequestJob
from api.registry.models import Model, ModelVersion, TrainingRun
from tests.conftest import bearer
from tests.service_fixtures import RUNS, insert_digits_dataset, insert_trained_model
from unlearning_core.artifacts import open_artifact
from unlearning_core.forget import ForgetSpec
from unlearning_core.pipeline import apply_method
from unlearning_core.store import BlobStore, LocalBlobStore, S3BlobStore
from unlearning_core.weights import state_from_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

CPU = torch.device("cpu")
LETHE = str(Path(sys.executable).with_name("lethe"))
REDIS_URL = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379/5")
#: The demo model of ``lethe serve`` (api/serve.py, seed_demo), trained through the API here.
DEMO_SPEC = {
    "name": "demo-digits",
    "dataset": "digits",
    "architecture": "small-cnn",
    "method": "partial-amnesiac",
    "epochs": 5,
    "batch_size": 32,
    "lr": 0.05,
    "prune_first": 0.95,
    "prune_last": 0.3,
}
@pytest.fixture
def broker(service_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The real Redis, a dedicated database flushed for the test; the API sends to it."""
    import redis

    from api.config import get_settings

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}); run `make test`", pytrace=False
        )
    monkeypatch.setenv("LETHE_BROKER_URL", REDIS_URL)
    get_settings.cache_clear()
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A ``lethe worker`` subprocess with its own log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                LETHE,
                "worker",
                "--device",
                "cpu",
                "--hostname",
                f"{self.name}@%h",
                "--loglevel",
                "INFO",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"worker {self.name} not ready in {timeout}s:\n{self.log()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill9()


@pytest.fixture
def workers(broker: str, tmp_path: Path) -> Iterator[Any]:
    """``workers(name, **env)`` starts a worker (env: LETHE_* overrides); all stop at the end."""
    started: list[Worker] = []

    def start(name: str, *, wait: bool = True, **overrides: str) -> Worker:
        env = {
            **os.environ,
            "LETHE_BROKER_URL": broker,
            "LETHE_DEVICE": "cpu",
            "LETHE_DISPATCH_INTERVAL_SECONDS": "1",
            "LETHE_JOB_STALE_SECONDS": "30",
            "LETHE_LOG_LEVEL": "INFO",
            **overrides,
        }
        worker = Worker(name, env, tmp_path)
        started.append(worker)
        return worker.start(wait=wait)

    yield start
    for worker in started:  # their logs stay in the test's tmp_path
        worker.terminate()
    for worker in started:
        worker.stop()


def copy_run(src: Path, dst: BlobStore, run_id: str) -> None:
    """Copy a recorded run from the local folder ``src`` into ``dst`` (same keys)."""
    local = LocalBlobStore(src)
    keys = local.list(f"runs/{run_id}/")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: dst.put(k, local.get(k)), keys))


def register_digits(db) -> int:  # type: ignore[no-untyped-def]
    """The digits dataset with subjects of ten (as POST /datasets leaves it); its id."""
    dataset = insert_digits_dataset(db)
    db.commit()
    return dataset.id


def register_model(db, store: BlobStore, dataset_id: int, name: str, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """A trained model as training through the API leaves it: model, run with ledger, v0."""
    arch, _record, method, _epochs, _batch = RUNS[run_id]
    insert_trained_model(
        db, store=store, dataset_id=dataset_id, name=name, run_id=run_id, architecture=arch, method=method
    )
    db.commit()


async def file(client, key: str, body: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    resp = await client.post("/erasure-requests", json=body, headers=bearer(key))
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


async def wait_for(
    client,
    key: str,
    request_ids: list[str],
    *,
    timeout: float = 90,
    done: frozenset[str] = frozenset({"completed", "failed"}),
) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Poll the status endpoint until every request is final (or the timeout)."""
    deadline = time.monotonic() + timeout
    out: dict[str, dict[str, Any]] = {}
    while True:
        for rid in request_ids:
            resp = await client.get(f"/requests/{rid}/status", headers=bearer(key))
            assert resp.status_code == 200, resp.text
            out[rid] = resp.json()
        if all(s["status"] in done for s in out.values()) or time.monotonic() > deadline:
            return out
        await asyncio.sleep(0.1)


def ledger_of(db, model: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    db.expire_all()
    return db.scalar(select(TrainingRun.ledger).join(Model).where(Model.name == model))


def outcome(
    db, name: str, request_ids: list[str], statuses: dict[str, dict[str, Any]], **extra: Any
) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Counts for the report line, from the database (not from what the test expects)."""
    db.expire_all()
    jobs = db.scalars(select(RequestJob).where(RequestJob.request_id.in_(request_ids))).all()
    changed = sum(1 for j in jobs if (j.details or {}).get("new_version"))
    published = db.scalar(
        select(func.count(AuditEvent.id)).where(
            AuditEvent.kind == "version.published", AuditEvent.request_id.in_(request_ids)
        )
    )
    per_job_versions = [
        db.scalar(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.kind == "version.published",
                AuditEvent.request_id == j.request_id,
                AuditEvent.model_name
                == db.scalar(select(Model.name).where(Model.id == j.model_id)),
            )
        )
        for j in jobs
    ]
    completed = sum(1 for s in statuses.values() if s["status"] == "completed")
    counts = {
        "sent": len(request_ids),
        "completed": completed,
        "duplicates": (published - changed) + sum(1 for n in per_job_versions if n > 1),
        "lost": len(request_ids) - completed,
        **extra,
    }
    print(f"\nFAULT-TEST {name}: " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return counts


def dry_run_state(
    local_runs: Path, run_id: str, sample_ids: list[str], method: str
) -> dict[str, torch.Tensor]:
    """The weights of subtracting ``sample_ids`` once from the original (nothing published)."""
    scratch = LocalBlobStore(local_runs)
    done = apply_method(
        scratch,
        run_id=run_id,
        method=method,
        forget=ForgetSpec(sample_ids=tuple(sample_ids)),
        device=CPU,
        publish=False,
    )
    return {k: v.detach().cpu() for k, v in done.outcome.model.state_dict().items()}


def head_state(db, store: BlobStore, model: str) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    db.expire_all()
    row = db.scalar(
        select(ModelVersion)
        .join(Model)
        .where(Model.name == model)
        .order_by(ModelVersion.number.desc())
        .limit(1)
    )
    return state_from_bytes(store.get(row.weights_key, expected_sha256=row.weights_sha256))


def affected_steps(local_runs: Path, run_id: str, sample_ids: list[str]) -> set[int]:
    run = open_artifact(LocalBlobStore(local_runs), run_id)
    table = run.sample_table
    positions = ForgetSpec(sample_ids=tuple(sample_ids)).resolve(
        table["sample_ids"], table["labels"], table["subject_ids"]
    )
    return {int(s) for s in run.index.steps_holding(positions)}


def subject_ids(first: int, n: int) -> list[str]:
    """Sample ids of subjects first..first+n-1 (ten consecutive training samples each)."""
    return [str(i) for i in range(first * 10, (first + n) * 10)]


# ---------------------------------------------------------------------------------------
# (a) end to end
# ---------------------------------------------------------------------------------------


async def test_end_to_end_train_and_erase_through_a_worker(
    client, api_keys, workers, db_session
) -> None:
    admin, requester = api_keys["admin"], api_keys["requester"]
    worker = workers("e2e")
    assert (
        await client.post(
            "/datasets",
            json={"name": "digits", "source": "digits", "subject_size": 10},
            headers=bearer(admin),
        )
    ).status_code == 201

    # POST /models -> lethe.train_run on the worker -> version 0
    trained_at = time.monotonic()
    resp = await client.post("/models", json=DEMO_SPEC, headers=bearer(admin))
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = (await client.get("/models/demo-digits", headers=bearer(admin))).json()
        if model["status"] != "training":
            break
        await asyncio.sleep(0.2)
    assert model["status"] == "ready" and model["latest_version"] == 0, model
    train_seconds = time.monotonic() - trained_at

    # POST /erasure-requests -> lethe.process_job on the worker -> version 1
    posted = time.monotonic()
    rid = await file(client, requester, {"subject_id": "subject-0007"})
    status = (await wait_for(client, requester, [rid], timeout=60))[rid]
    seconds = time.monotonic() - posted
    assert status["status"] == "completed", status
    (job,) = status["jobs"]
    assert job["version"]["number"] == 1 and job["attempts"] == 1 and job["device"] == "cpu"
    assert job["progress"] == 1.0 and job["step"] == "done" and job["details"]["job_seconds"] > 0
    assert job["details"]["batches_subtracted"] > 0 and "forget_acc" in job["version"]["metrics"]
    print(
        f"\nE2E demo-digits (small-cnn, partial-amnesiac, 5 epochs): POST /models -> v0 ready "
        f"{train_seconds:.2f}s; POST /erasure-requests -> v1 published {seconds:.2f}s "
        f"(job {job['details']['job_seconds']:.2f}s on {job['device']})",
        flush=True,
    )

    # duplicated and redelivered messages for a finished job are harmless
    from api import wake

    job_id = db_session.scalar(select(RequestJob.id).where(RequestJob.request_id == rid))
    assert wake.send(wake.PROCESS_JOB, [(job_id,)] * 3) == 3
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and worker.log().count(f"job {job_id}: skipped") < 3:
        await asyncio.sleep(0.1)
    assert worker.log().count(f"job {job_id}: skipped") == 3, worker.log()[-3000:]
    outcome(db_session, "end-to-end", [rid], {rid: status}, seconds=round(seconds, 2))
    versions = db_session.execute(
        select(ModelVersion.number, ModelVersion.method).order_by(ModelVersion.number)
    ).all()
    # one erasure version, however often the job's message came; the model's erasure policy
    # may then compact it (its accuracy drop can cross the default threshold): that version
    # is the compaction's, never a second erasure
    assert [tuple(v) for v in versions[:2]] == [(0, "train"), (1, "partial-amnesiac")], versions
    assert all(method == "compact" for _, method in versions[2:]), versions
    kinds = [
        e.kind for e in db_session.scalars(select(AuditEvent).where(AuditEvent.request_id == rid))
    ]
    assert kinds.count("job.started") == 1 and kinds.count("version.published") == 1
    assert verify(db_session)["ok"] is True


# ---------------------------------------------------------------------------------------
# (b) kill -9 in the middle of an unlearning job
# ---------------------------------------------------------------------------------------


async def test_kill_9_mid_job_completes_once_on_another_worker(
    client, api_keys, workers, db_session, recorded_runs, s3_settings, monkeypatch
) -> None:
    from api.blobs import get_store
    from api.config import get_settings

    bucket = f"lethe-celery-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("LETHE_BLOB_STORE", f"s3://{bucket}/blobs")
    monkeypatch.setenv("LETHE_S3_ENDPOINT", s3_settings.endpoint)
    get_settings.cache_clear()
    get_store.cache_clear()
    store = get_store()
    try:
        copy_run(recorded_runs, store, "celery-big")
        register_model(db_session, store, register_digits(db_session), "big", "celery-big")
        forget = subject_ids(0, 40)  # 400 samples: nearly every recorded batch
        stale = {"LETHE_JOB_STALE_SECONDS": "3"}
        first = workers("doomed", **stale)
        rid = await file(client, api_keys["requester"], {"sample_ids": forget})

        # kill -9 while the job is subtracting batches
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            db_session.expire_all()
            job = db_session.scalar(select(RequestJob).where(RequestJob.request_id == rid))
            if job.status == "running" and job.step == "unlearning":
                break
            await asyncio.sleep(0.02)
        assert job.step == "unlearning", (job.status, job.step, first.log()[-3000:])
        await asyncio.sleep(0.5)  # the subtraction of ~700 batches from S3 takes seconds
        first.kill9()
        db_session.expire_all()
        job = db_session.get(RequestJob, job.id)
        killed_in = (job.status, job.step, job.version_id)
        assert killed_in == ("running", "unlearning", None), killed_in
        assert db_session.scalar(select(func.count(ModelVersion.id))) == 1  # nothing half-published
        assert ledger_of(db_session, "big")["subtracted_steps"] == []

        second = workers("rescuer", **stale)
        status = (await wait_for(client, api_keys["requester"], [rid], timeout=90))[rid]
        assert status["status"] == "completed", (status, second.log()[-3000:])
        (out,) = status["jobs"]
        assert out["attempts"] == 2 and out["version"]["number"] == 1

        ledger = ledger_of(db_session, "big")
        steps = ledger["subtracted_steps"]
        assert [v["version"] for v in ledger["versions"]] == [0, 1]
        assert len(steps) == len(set(steps)) and set(steps) == affected_steps(
            recorded_runs, "celery-big", forget
        )
        expected = dry_run_state(recorded_runs, "celery-big", forget, "amnesiac")
        got = head_state(db_session, store, "big")
        assert all(torch.equal(got[k], expected[k]) for k in expected)  # each batch exactly once
        kinds = [
            e.kind
            for e in db_session.scalars(select(AuditEvent).where(AuditEvent.request_id == rid))
        ]
        assert kinds.count("job.started") == 2 and kinds.count("version.published") == 1
        assert verify(db_session)["ok"] is True
        outcome(
            db_session,
            "kill-9-mid-job",
            [rid],
            {rid: status},
            attempts=out["attempts"],
            batches_subtracted=out["details"]["batches_subtracted"],
            batches_subtracted_twice=len(steps) - len(set(steps)),
        )
    finally:
        _drop_bucket(store)


# ---------------------------------------------------------------------------------------
# (c) broker down when the requests arrive
# ---------------------------------------------------------------------------------------


async def test_broker_down_when_requests_arrive(
    client, api_keys, workers, db_session, recorded_runs, monkeypatch, caplog
) -> None:
    from api.blobs import get_store
    from api.config import get_settings

    store = get_store()
    shutil.copytree(recorded_runs, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    register_model(db_session, store, register_digits(db_session), "small", "celery-small")
    # the API's broker is down (nothing listens there); the workers' is fine
    monkeypatch.setenv("LETHE_BROKER_URL", f"redis://127.0.0.1:{free_port()}/5")
    get_settings.cache_clear()
    posted = time.monotonic()
    ids = [
        await file(client, api_keys["requester"], {"subject_id": f"subject-{n:04d}"})
        for n in (20, 21, 22)
    ]
    assert time.monotonic() - posted < 10  # 202 at once, broker or not
    assert "broker unreachable" in caplog.text
    db_session.expire_all()
    assert {j.status for j in db_session.scalars(select(RequestJob))} == {"queued"}

    workers("after-outage")  # on the real broker; its dispatcher finds the queued rows
    statuses = await wait_for(client, api_keys["requester"], ids, timeout=60)
    assert all(s["status"] == "completed" for s in statuses.values()), statuses
    assert [v["version"] for v in ledger_of(db_session, "small")["versions"]] == [0, 1, 2, 3]
    counts = outcome(db_session, "broker-down", ids, statuses)
    assert counts["duplicates"] == 0 and counts["lost"] == 0


# ---------------------------------------------------------------------------------------
# (d) two requests for one model at once
# ---------------------------------------------------------------------------------------


async def test_two_requests_for_one_model_at_once_subtract_the_union_once(
    client, api_keys, workers, db_session, recorded_runs
) -> None:
    from api.blobs import get_store

    store = get_store()
    shutil.copytree(recorded_runs, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    register_model(db_session, store, register_digits(db_session), "small", "celery-small")
    workers("left")
    workers("right")
    first, second = subject_ids(30, 3), subject_ids(32, 3)  # overlap: subject 32 in both
    ids = list(
        await asyncio.gather(
            file(client, api_keys["requester"], {"sample_ids": first}),
            file(client, api_keys["requester"], {"sample_ids": second}),
        )
    )
    statuses = await wait_for(client, api_keys["requester"], ids, timeout=60)
    assert all(s["status"] == "completed" for s in statuses.values()), statuses
    union = sorted(set(first) | set(second), key=int)
    ledger = ledger_of(db_session, "small")
    steps = ledger["subtracted_steps"]
    assert [v["version"] for v in ledger["versions"]] == [0, 1, 2]
    assert [v["parent"] for v in ledger["versions"]] == [None, 0, 1]  # one after the other
    assert len(steps) == len(set(steps)) and set(steps) == affected_steps(
        recorded_runs, "celery-small", union
    )
    assert sorted(ledger["erased_sample_ids"], key=int) == union
    expected = dry_run_state(recorded_runs, "celery-small", union, "partial-amnesiac")
    got = head_state(db_session, store, "small")
    worst = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-5, worst  # the union subtracted once (float summation order aside)
    jobs = [s["jobs"][0] for s in statuses.values()]
    devices = {j["device"] for j in jobs}
    waited = max(j["details"]["lineage_wait_seconds"] for j in jobs)
    counts = outcome(
        db_session,
        "two-at-once",
        ids,
        statuses,
        max_abs_weight_diff=f"{worst:.1e}",
        lineage_wait_s=round(waited, 2),
    )
    assert counts["duplicates"] == 0 and devices == {"cpu"}


# ---------------------------------------------------------------------------------------
# (e) S3 briefly unavailable
# ---------------------------------------------------------------------------------------


def _drop_bucket(store: BlobStore) -> None:
    if isinstance(store, S3BlobStore):
        from tests.conftest import _drop_bucket as drop

        drop(store)


class TcpProxy:
    """A TCP forwarder in front of the S3 server that the test can take down and bring back
    (the S3 server itself keeps its data: moto's is in memory)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


async def test_s3_briefly_unavailable_is_retried_and_completes(
    client, api_keys, workers, db_session, recorded_runs, s3_settings, monkeypatch
) -> None:
    from api.blobs import get_store
    from api.config import get_settings

    bucket = f"lethe-celery-{uuid.uuid4().hex[:12]}"
    direct = S3BlobStore(bucket, "blobs", s3_settings)
    proxy = TcpProxy(s3_settings.endpoint)
    proxy.start()
    try:
        copy_run(recorded_runs, direct, "celery-small")
        register_model(db_session, direct, register_digits(db_session), "small", "celery-small")
        through_proxy = {
            "LETHE_BLOB_STORE": f"s3://{bucket}/blobs",
            "LETHE_S3_ENDPOINT": f"127.0.0.1:{proxy.port}",
            "LETHE_S3_RETRIES": "0",
            "LETHE_S3_CONNECT_TIMEOUT_S": "1",
            # the outage below is short; more retries keep a run of short jittered
            # countdowns from exhausting them before S3 is back
            "LETHE_TASK_MAX_RETRIES": "8",
        }
        for k, v in through_proxy.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        get_store.cache_clear()
        workers("s3-retry", **through_proxy)

        proxy.stop()  # S3 goes away
        down_at = time.monotonic()
        rid = await file(client, api_keys["requester"], {"subject_id": "subject-0040"})
        deadline = time.monotonic() + 30
        retries = 0
        while time.monotonic() < deadline and not retries:
            retries = db_session.scalar(
                select(func.count(AuditEvent.id)).where(
                    AuditEvent.request_id == rid, AuditEvent.kind == "job.retrying"
                )
            )
            await asyncio.sleep(0.05)
        assert retries, "the worker never hit the outage"
        retrying = db_session.scalar(
            select(AuditEvent).where(
                AuditEvent.request_id == rid, AuditEvent.kind == "job.retrying"
            )
        )
        assert "unreachable" in retrying.payload["error"], retrying.payload
        await asyncio.sleep(3.0)
        proxy.start()  # ... and comes back
        outage = time.monotonic() - down_at

        status = (await wait_for(client, api_keys["requester"], [rid], timeout=120))[rid]
        assert status["status"] == "completed", status
        (out,) = status["jobs"]
        assert out["version"]["number"] == 1 and out["attempts"] >= 2 and out["error"] is None
        kinds = [
            e.kind
            for e in db_session.scalars(select(AuditEvent).where(AuditEvent.request_id == rid))
        ]
        assert kinds.count("version.published") == 1 and kinds[-1] == "request.completed"
        counts = outcome(
            db_session,
            "s3-briefly-down",
            [rid],
            {rid: status},
            outage_s=round(outage, 1),
            retries=kinds.count("job.retrying"),
            attempts=out["attempts"],
        )
        assert counts["duplicates"] == 0
    finally:
        proxy.stop()
        _drop_bucket(direct)


# ---------------------------------------------------------------------------------------
# Permanent faults, the admin retry, abandoned jobs, the command line
# ---------------------------------------------------------------------------------------


async def test_permanent_fault_fails_readably_and_admin_retry_enqueues(
    client, api_keys, workers, db_session, recorded_runs
) -> None:
    from api.blobs import get_store

    store = get_store()
    blobs = Path(os.environ["LETHE_BLOB_STORE"])
    shutil.copytree(recorded_runs, blobs, dirs_exist_ok=True)
    register_model(db_session, store, register_digits(db_session), "small", "celery-small")
    updates = store.get_json("runs/celery-small/updates.json")
    for blob in updates:
        store.delete(blob["key"])  # the recorded updates are gone: not a transient fault
    workers("no-dispatcher", LETHE_DISPATCH_INTERVAL_SECONDS="0")  # only the API enqueues
    rid = await file(client, api_keys["requester"], {"subject_id": "subject-0050"})
    failed = (await wait_for(client, api_keys["requester"], [rid], timeout=60))[rid]
    assert failed["status"] == "failed" and "no blob" in failed["error"], failed
    assert failed["jobs"][0]["attempts"] == 1  # not retried: a missing blob stays missing

    shutil.copytree(recorded_runs, blobs, dirs_exist_ok=True)  # the operator restores them
    retried = await client.post(f"/admin/requests/{rid}/retry", headers=bearer(api_keys["admin"]))
    assert retried.status_code == 200, retried.text
    done = (await wait_for(client, api_keys["requester"], [rid], timeout=60))[rid]
    assert done["status"] == "completed" and done["jobs"][0]["attempts"] == 2, done
    kinds = [
        e.kind for e in db_session.scalars(select(AuditEvent).where(AuditEvent.request_id == rid))
    ]
    assert kinds.count("job.failed") == 1 and kinds.count("request.failed") == 1
    assert kinds[-1] == "request.completed" and verify(db_session)["ok"] is True


async def test_abandoned_job_is_requeued_claimed_again_and_the_old_attempt_discarded(
    client, api_keys, db_session, recorded_runs, monkeypatch
) -> None:
    """The flows under the workers, in-process: stale heartbeat -> requeue / re-claim."""
    from sqlalchemy import update

    from api.blobs import get_store
    from api.config import get_settings
    from api.database.core import get_sessionmaker
    from api.erasure import flows

    monkeypatch.setenv("LETHE_JOB_STALE_SECONDS", "5")
    get_settings.cache_clear()
    store = get_store()
    shutil.copytree(recorded_runs, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    register_model(db_session, store, register_digits(db_session), "small", "celery-small")
    sf = get_sessionmaker()
    rid = await file(client, api_keys["requester"], {"subject_id": "subject-0060"})
    job_id = db_session.scalar(select(RequestJob.id).where(RequestJob.request_id == rid))
    old = flows.claim(session_factory=sf, job_id=job_id, device=CPU)
    assert old is not None and old.attempt == 1
    assert flows.claim(session_factory=sf, job_id=job_id, device=CPU) is None  # alive: not twice
    assert flows.requeue_abandoned(session_factory=sf) == []

    def age(seconds: float) -> None:
        with sf() as db:
            db.execute(
                update(RequestJob)
                .where(RequestJob.id == job_id)
                .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
            )
            db.commit()

    age(60)  # the worker died
    assert flows.requeue_abandoned(session_factory=sf) == [job_id]
    db_session.expire_all()
    job = db_session.get(RequestJob, job_id)
    assert job.status == "queued" and job.step == "re-queued: its worker stopped"
    assert flows.pending_job_ids(session_factory=sf) == []  # just touched: left a while
    age(60)
    assert flows.pending_job_ids(session_factory=sf) == [job_id]

    new = flows.claim(session_factory=sf, job_id=job_id, device=CPU)
    assert new is not None and new.attempt == 2
    age(60)  # a stale *running* job is claimed directly too (a redelivered message)
    newest = flows.claim(session_factory=sf, job_id=job_id, device=CPU)
    assert newest is not None and newest.attempt == 3
    # the zombie attempts finish late: their results are discarded, nothing published
    assert flows.run_claimed(session_factory=sf, store=store, claim=old, device=CPU) == "discarded"
    assert db_session.scalar(select(func.count(ModelVersion.id))) == 1
    assert flows.run_claimed(session_factory=sf, store=store, claim=newest, device=CPU) == "completed"
    db_session.expire_all()
    assert db_session.scalar(select(func.count(ModelVersion.id))) == 2
    assert [v["version"] for v in ledger_of(db_session, "small")["versions"]] == [0, 1]
    kinds = [
        e.kind for e in db_session.scalars(select(AuditEvent).where(AuditEvent.request_id == rid))
    ]
    assert kinds.count("job.started") == 3 and kinds.count("job.requeued") == 1
    assert kinds.count("version.published") == 1 and verify(db_session)["ok"] is True


def test_worker_command_refuses_bad_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    no_broker = subprocess.run(
        [LETHE, "worker"], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert no_broker.returncode == 2 and "LETHE_BROKER_URL is not set" in no_broker.stderr
    env["LETHE_BROKER_URL"] = REDIS_URL
    for args, message in (
        (["--concurrency", "2"], "solo pool runs one task at a time"),
        (["--device", "tpu:0"], "device"),
        (["--pool", "gevent"], "unknown pool"),
    ):
        out = subprocess.run(
            [LETHE, "worker", *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)


# ---------------------------------------------------------------------------------------
# SISA: one task per shard, trained by several workers
# ---------------------------------------------------------------------------------------


async def test_sisa_shards_train_in_parallel_on_several_workers(
    client, api_keys, workers, db_session
) -> None:
    from api.blobs import get_store
    from unlearning_core.sisa.run import shard_marker

    admin, requester = api_keys["admin"], api_keys["requester"]
    workers("sa")
    workers("sb")
    assert (
        await client.post(
            "/datasets",
            json={"name": "digits", "source": "digits", "subject_size": 10},
            headers=bearer(admin),
        )
    ).status_code == 201
    spec = {
        "name": "sisa-digits",
        "dataset": "digits",
        "architecture": "mlp",
        "method": "sisa",
        "shards": 4,
        "slices": 2,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.05,
    }
    resp = await client.post("/models", json=spec, headers=bearer(admin))
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = (await client.get("/models/sisa-digits", headers=bearer(admin))).json()
        if model["status"] != "training":
            break
        await asyncio.sleep(0.2)
    assert model["status"] == "ready" and model["latest_version"] == 0, model

    db_session.expire_all()
    run = db_session.scalar(select(TrainingRun).join(Model).where(Model.name == "sisa-digits"))
    assert run.status == "completed" and run.ledger["checkpoints"].keys() == {"0", "1", "2", "3"}
    store = get_store(run.store_url)  # the tenant's prefix
    markers = [shard_marker(store, run.run_id, s) for s in range(4)]
    assert all(m is not None for m in markers)
    hosts = {m["worker"].split("@")[0] for m in markers}
    assert len(hosts) > 1, hosts  # the shards were trained on more than one worker
    trained = db_session.scalars(
        select(AuditEvent).where(
            AuditEvent.kind == "model.trained", AuditEvent.model_name == "sisa-digits"
        )
    ).all()
    assert len(trained) == 1  # published once

    rid = await file(client, requester, {"subject_id": "subject-0007"})
    status = (await wait_for(client, requester, [rid], timeout=60))[rid]
    assert status["status"] == "completed", status
    (job,) = status["jobs"]
    assert job["method"] == "sisa" and job["version"]["number"] == 1, job
    assert verify(db_session)["ok"] is True
