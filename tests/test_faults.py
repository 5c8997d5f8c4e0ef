"""Fault injection against a PRIVATE real stack: PostgreSQL, Redis, an S3 server (moto) and
two ``lethe worker`` processes (Celery), all started by this module on their own ports
(tests/private_stack.py); the shared test servers are never touched.

Each fault files erasure requests through the API (in-process, on the private database and
broker) and hits the stack while they are processed:

=================  =========================================================================
kill-9-worker      SIGKILL the workers at a random point of a running job, restart them
redis-restart      Redis killed and restarted empty (no persistence: queued messages lost)
postgres-restart   PostgreSQL crashed (``pg_ctl stop -m immediate``) while requests arrive
s3-stopped         the S3 server frozen (SIGSTOP) for 5 s, then resumed
blob-corrupted     one recorded update the first request needs is rewritten behind the store
blob-deleted       one recorded update the first request needs is deleted
disk-full          a local blob store on a full tmpfs: the new version cannot be written
=================  =========================================================================

For each it counts, from the database: requests sent, completed, failed with a readable
error, lost (neither: must be 0), duplicated versions (a version published twice for a job
or two versions with one parent: must be 0), and whether each affected step was subtracted
exactly once: the served weights against the trained weights minus every step the completed
requests touched, each decoded on its own and summed once (``subtraction_check``). Faults that fail requests on purpose (corrupt or missing
blob, full disk) are then repaired and the requests retried by an admin: all must complete.

Bounded in ``make test`` (``LETHE_FAULT_REQUESTS``, default 2 requests per fault); the
longer run is ``bench/faults.py`` (10 per fault, JSON in bench/results/faults.json). Each
test prints ``FAULT <name>: sent=.. completed=..`` (``-s`` shows it).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from api.audit.models import AuditEvent
from api.erasure.models import ErasureRequest, RequestJob
from api.registry.models import Model, ModelVersion, TrainingRun
from tests.conftest import bearer
from tests.private_stack import PrivatePostgres, PrivateRedis, PrivateS3, WorkerProcess
from tests.reliability_world import MODEL, RUN_ID, train_world_run

pytestmark = pytest.mark.timeout(300)

REQUESTS = int(os.environ.get("LETHE_FAULT_REQUESTS", "2"))
REPORT = os.environ.get("LETHE_FAULT_REPORT")  # bench/faults.py: where to write the figures
FINAL = {"completed", "failed", "cancelled", "denied"}
RESULTS: dict[str, dict[str, Any]] = {}
#: The data faults need batches no earlier fault subtracted: each gets a model of its own.
DATA_FAULT_MODELS = {"digits-corrupt": "world-run-corrupt", "digits-deleted": "world-run-deleted"}
#: Workers see an abandoned job after 4 s and retry transient faults 10 times (backoff).
WORKER_ENV = {
    "LETHE_DEVICE": "cpu",
    "LETHE_DISPATCH_INTERVAL_SECONDS": "1",
    "LETHE_JOB_STALE_SECONDS": "4",
    "LETHE_TASK_MAX_RETRIES": "10",
    "LETHE_S3_RETRIES": "0",
    "LETHE_S3_CONNECT_TIMEOUT_S": "1",
    "LETHE_S3_READ_TIMEOUT_S": "3",
    "LETHE_LOG_LEVEL": "INFO",
    "LETHE_EMBEDDED_WORKER": "false",
    "LETHE_SEED_DEMO": "false",
}


# ---------------------------------------------------------------------------------------
# The private stack
# ---------------------------------------------------------------------------------------


@dataclass
class Lane:
    """One service database with its broker, blob store, model and workers."""

    env: dict[str, str]
    keys: dict[str, str]
    workers: list[WorkerProcess]
    subjects: Iterator[int]
    #: the runs as trained, before any fault or purge touched the lane's store
    pristine_runs: Path | None = None

    def activate(self, mp: pytest.MonkeyPatch) -> None:
        from api.database.core import reset_caches

        for k, v in self.env.items():
            mp.setenv(k, v)
        reset_caches()


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: PrivateRedis
    s3: PrivateS3
    log_dir: Path
    runs: Path
    lanes: dict[str, Lane] = field(default_factory=dict)


def _copy_runs(src: Path, dst: Any) -> None:
    from unlearning_core.store import LocalBlobStore

    local = LocalBlobStore(src)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: dst.put(k, local.get(k)), local.list("runs/")))


def open_lane(stack: Stack, name: str, *, blob_store: str, redis_db: int, workers: int) -> Lane:
    """A migrated database on the private server, the world's model in ``blob_store``,
    keys, and ``workers`` running worker processes."""
    from api.auth.service import create_key
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from api.database.migrate import upgrade
    from tests.service_fixtures import insert_digits_dataset, insert_trained_model

    url = stack.pg.create_database(f"lethe_faults_{name}")
    upgrade(url)
    env = {
        **WORKER_ENV,
        "LETHE_DATABASE_URL": url,
        "LETHE_BROKER_URL": f"redis://127.0.0.1:{stack.redis.port}/{redis_db}",
        "LETHE_BLOB_STORE": blob_store,
        "LETHE_S3_ENDPOINT": stack.s3.endpoint,
    }
    with pytest.MonkeyPatch.context() as mp:
        lane = Lane(env=env, keys={}, workers=[], subjects=iter(range(143)), pristine_runs=stack.runs)
        lane.activate(mp)
        store = get_store()
        _copy_runs(stack.runs, store)
        with get_sessionmaker()() as db:
            dataset = insert_digits_dataset(db)
            for model, run_id in ((MODEL, RUN_ID), *DATA_FAULT_MODELS.items()):
                insert_trained_model(
                    db, store=store, dataset_id=dataset.id, name=model, run_id=run_id, architecture="mlp",
                    method="partial-amnesiac",
                )
            for scope in ("requester", "admin"):
                lane.keys[scope] = create_key(db, name=f"faults-{scope}", scopes=[scope], tenant="acme")[1]
            db.commit()
    lane.workers = [
        WorkerProcess(f"{name}-w{i}", {**os.environ, **env}, stack.log_dir).start(wait=False) for i in range(workers)
    ]
    for w in lane.workers:
        w.wait_ready()
    return lane


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from api.database.core import reset_caches

    log_dir = tmp_path_factory.mktemp("private-stack")
    pg, redis, s3 = PrivatePostgres(), PrivateRedis(), PrivateS3(log_dir)
    made = Stack(pg=pg, redis=redis, s3=s3, log_dir=log_dir, runs=log_dir / "runs")
    try:
        pg.start()
        redis.start()
        s3.start()
        for run_id in (RUN_ID, *DATA_FAULT_MODELS.values()):
            train_world_run(made.runs, run_id)
        yield made
    finally:
        workers = [w for lane in made.lanes.values() for w in lane.workers]
        for w in workers:
            w.terminate()
        for w in workers:
            w.stop(timeout=3)
        for server in (s3, redis, pg):
            server.close()
        reset_caches()
        if REPORT and RESULTS:
            Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
            Path(REPORT).write_text(json.dumps({"requests_per_fault": REQUESTS, "faults": RESULTS}, indent=2))


@pytest.fixture(scope="module")
def s3_lane(stack: Stack) -> Lane:
    bucket = f"faults-{os.getpid()}"
    lane = open_lane(stack, "s3", blob_store=f"s3://{bucket}/blobs", redis_db=0, workers=2)
    stack.lanes["s3"] = lane
    return lane


@pytest.fixture
def lane(s3_lane: Lane, monkeypatch: pytest.MonkeyPatch) -> Lane:
    s3_lane.activate(monkeypatch)
    for w in s3_lane.workers:  # a previous fault may have left one dead
        if not w.alive():
            w.start()
    return s3_lane


# ---------------------------------------------------------------------------------------
# Filing, waiting, counting
# ---------------------------------------------------------------------------------------


class Api:
    """The API in-process on the lane's settings; a client that retries a 503 with the same
    Idempotency-Key, as a well-behaved client of an erasure service should."""

    def __init__(self, lane: Lane) -> None:
        from fastapi.testclient import TestClient

        from api.main import create_app

        self.lane = lane
        self.client = TestClient(create_app(), raise_server_exceptions=False)
        self.refused: list[str] = []  # every non-2xx answer, "status: detail"

    def file(self, subject: int, model: str, *, give_up_after: float = 60) -> str:
        key = f"fault-{subject}-{random.random()}"
        deadline = time.monotonic() + give_up_after
        while True:
            resp = self.client.post(
                "/erasure-requests", json={"subject_id": f"subject-{subject:04d}", "models": [model]},
                headers={**bearer(self.lane.keys["requester"]), "Idempotency-Key": key},
            )
            if resp.status_code == 202:
                return str(resp.json()["id"])
            self.refused.append(f"{resp.status_code}: {resp.text[:200]}")
            assert resp.status_code == 503 and resp.json()["detail"], resp.text  # readable, retryable
            assert time.monotonic() < deadline, self.refused[-3:]
            time.sleep(0.5)

    def retry(self, request_id: str) -> None:
        resp = self.client.post(f"/admin/requests/{request_id}/retry", headers=bearer(self.lane.keys["admin"]))
        assert resp.status_code == 200, resp.text


def session():  # type: ignore[no-untyped-def]
    from api.database.core import get_sessionmaker

    return get_sessionmaker()()


def wait_final(ids: list[str], timeout: float) -> dict[str, ErasureRequest]:
    """Poll the database (not the API: it may be the thing that is down) until all are final."""
    deadline = time.monotonic() + timeout
    rows: dict[str, ErasureRequest] = {}
    while time.monotonic() < deadline:
        try:
            with session() as db:
                rows = {r.id: r for r in db.scalars(select(ErasureRequest).where(ErasureRequest.id.in_(ids)))}
                for r in rows.values():
                    db.expunge(r)
        except Exception:  # the database restarting: keep polling
            time.sleep(0.5)
            continue
        if len(rows) == len(ids) and all(r.status in FINAL for r in rows.values()):
            break
        time.sleep(0.2)
    return rows


def readable(error: str | None) -> bool:
    return bool(error) and "Traceback" not in str(error) and len(str(error)) < 2000


def subtraction_check(model: str, pristine_runs: Path) -> dict[str, Any]:
    """Whether the weights the model serves equal its trained weights minus each affected
    step's stored update exactly once, within float tolerance.

    The ledger is a set, so counting repeats in it proves nothing; a step subtracted twice
    (a job run again after a crash, a version published twice), or one left out, moves the
    weights by a whole recorded update. Independently of the jobs' path (prefetch, running
    sum, one version after another), each step the completed jobs' samples touched is decoded
    on its own and the sum taken once, in float64, with the pruning the jobs asked for. The
    updates and trained weights are read from the runs as trained (``pristine_runs``): the
    lane's own copies may be damaged by the fault or purged after the erasure."""
    import torch
    from safetensors.torch import load as st_load

    from api.blobs import get_store, store_at
    from unlearning_core.artifacts import open_artifact
    from unlearning_core.methods.amnesiac import prune_shares
    from unlearning_core.recording import decode_update
    from unlearning_core.store import LocalBlobStore

    with session() as db:
        run_row = db.scalar(select(TrainingRun).join(Model).where(Model.name == model, TrainingRun.status == "completed")
                            .order_by(TrainingRun.id.desc()).limit(1))
        latest = db.scalar(select(ModelVersion).join(Model).where(Model.name == model)
                           .order_by(ModelVersion.number.desc()).limit(1))
        jobs = db.execute(select(RequestJob.method, RequestJob.method_options, RequestJob.sample_ids).join(Model)
                          .where(Model.name == model, RequestJob.status == "completed")).all()
    assert run_row is not None and latest is not None
    store = store_at(run_row.store_url, get_store())
    run = open_artifact(LocalBlobStore(pristine_runs), run_row.run_id)
    position = {sid: i for i, sid in enumerate(run.sample_table["sample_ids"])}
    positions = [position[sid] for *_, ids in jobs for sid in ids if sid in position]
    affected = sorted({int(x) for x in run.index.steps_holding(np.asarray(positions, dtype=np.int64))}) if positions else []
    options = {json.dumps(o or {}, sort_keys=True) for _, o, _ in jobs} or {"{}"}
    assert len(options) == 1 and {m for m, *_ in jobs} <= {"partial-amnesiac"}, (options, jobs)
    opts = json.loads(options.pop())
    prune = prune_shares(run, partial=True, prune_first=opts.get("prune_first"), prune_last=opts.get("prune_last"))
    fmt = run.update_format()
    expected = {k: v.double() for k, v in run.load_weights(run.spec.trained_weights).items()}
    one_update = 0.0
    for step in affected:
        blob = run.update_blobs[step]
        update = decode_update(run.store.get(blob.key, expected_sha256=blob.sha256), fmt, prune=prune,
                               epoch=int(run.index.epochs[step]), batch=int(run.index.batches[step]))
        for k, d in update.items():
            expected[k] -= d.double()
            one_update = max(one_update, float(d.abs().max()))
    served = st_load(store.get(latest.weights_key, expected_sha256=latest.weights_sha256))
    error = max(float((served[k].double() - v).abs().max()) for k, v in expected.items() if torch.is_floating_point(v))
    ledger = sorted({int(x) for x in (run_row.ledger or {}).get("subtracted_steps", [])})
    return {
        "steps_affected": len(affected),
        "ledger_is_the_affected_steps": ledger == affected,
        "max_abs_error": error,
        "largest_update_entry": one_update,  # what one step too many or too few would move
        "each_step_subtracted_once": error <= SUBTRACTION_TOLERANCE and ledger == affected,
    }


#: float32 weights after a few dozen float32 subtractions, against one float64 sum
SUBTRACTION_TOLERANCE = 1e-5


def tally(name: str, ids: list[str], rows: dict[str, ErasureRequest], model: str, pristine_runs: Path,
          **extra: Any) -> dict[str, Any]:
    """The figures of one fault, from the database."""
    with session() as db:
        published = db.execute(
            select(AuditEvent.request_id, AuditEvent.model_name, func.count())
            .where(AuditEvent.kind == "version.published", AuditEvent.request_id.in_(ids))
            .group_by(AuditEvent.request_id, AuditEvent.model_name)
        ).all()
        forks = db.execute(
            select(ModelVersion.model_id, ModelVersion.parent_number, func.count())
            .where(ModelVersion.parent_number.is_not(None))
            .group_by(ModelVersion.model_id, ModelVersion.parent_number)
            .having(func.count() > 1)
        ).all()
        ledger = db.scalar(select(TrainingRun.ledger).join(Model).where(Model.name == model))
        versions = db.scalar(select(func.count(ModelVersion.id)).join(Model).where(Model.name == model))
        attempts = db.scalar(select(func.sum(RequestJob.attempts)).where(RequestJob.request_id.in_(ids))) or 0
    completed = sum(1 for r in rows.values() if r.status == "completed")
    failed_readable = sum(1 for r in rows.values() if r.status == "failed" and readable(r.error))
    figures = {
        "sent": len(ids),
        "completed": completed,
        "failed_readable": failed_readable,
        "lost": len(ids) - completed - failed_readable,
        "duplicated_versions": sum(n - 1 for *_, n in published if n > 1) + sum(n - 1 for *_, n in forks),
        **subtraction_check(model, pristine_runs),
        "ledger_versions_match": len(ledger["versions"]) == versions,
        "job_attempts": int(attempts),  # above `sent`: jobs run again after the fault
        **extra,
    }
    print(f"\nFAULT {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures


def run_fault(
    name: str, lane: Lane, inject: Callable[[], dict[str, Any] | None], *, timeout: float = 150,
    repair: Callable[[], None] | None = None, rest_after: float = 0.0, model: str = MODEL,
) -> dict[str, Any]:
    """File one request, start ``inject`` in a thread, file the others ``rest_after`` seconds
    later (into the fault); wait; count; assert the invariants. With ``repair``: then repair,
    retry the failed ones as an admin, and count again."""
    api = Api(lane)
    started = time.monotonic()
    subjects = [next(lane.subjects) for _ in range(REQUESTS)]
    ids = [api.file(subjects[0], model)]
    notes: dict[str, Any] = {}
    fault = threading.Thread(target=lambda: notes.update(inject() or {}), name=f"fault-{name}")
    fault.start()
    time.sleep(rest_after)
    ids += [api.file(s, model) for s in subjects[1:]]
    fault.join()
    rows = wait_final(ids, timeout)
    assert lane.pristine_runs is not None
    figures = tally(name, ids, rows, model, lane.pristine_runs, api_503=len(api.refused), **notes)
    assert all(r.startswith("503") for r in api.refused), api.refused
    if repair is not None:
        assert figures["failed_readable"] >= 1, (figures, {r.id: r.error for r in rows.values()})
        figures["errors"] = sorted({str(r.error)[:160] for r in rows.values() if r.status == "failed"})
        repair()
        for rid, row in rows.items():
            if row.status == "failed":
                api.retry(rid)
        rows = wait_final(ids, timeout)
        after = tally(f"{name} (after repair + admin retry)", ids, rows, model, lane.pristine_runs)
        figures["completed_after_retry"] = after["completed"]
        figures["lost"] = after["lost"]
        figures["duplicated_versions"] = after["duplicated_versions"]
        for key in ("steps_affected", "ledger_is_the_affected_steps", "max_abs_error", "each_step_subtracted_once"):
            figures[key] = after[key]
        assert after["completed"] == len(ids), (after, {r.id: (r.status, r.error) for r in rows.values()})
    else:
        assert figures["completed"] == len(ids), (figures, {r.id: (r.status, r.error) for r in rows.values()})
    figures["seconds"] = round(time.monotonic() - started, 1)
    RESULTS[name] = figures
    assert figures["lost"] == 0 and figures["duplicated_versions"] == 0
    assert figures["each_step_subtracted_once"], figures
    assert figures["ledger_versions_match"], figures
    return figures


# ---------------------------------------------------------------------------------------
# Process and server faults: every request completes
# ---------------------------------------------------------------------------------------


def test_kill_9_of_a_worker_at_random_points(lane: Lane) -> None:
    """Wait until a job runs, kill -9 at a random point of it. The job row does not say
    which worker holds it, so every worker is killed (the holder among them) and restarted."""
    rng = random.Random(7)
    kills: list[float] = []

    def running() -> bool:
        with session() as db:
            return bool(db.scalar(select(func.count(RequestJob.id)).where(RequestJob.status == "running")))

    def inject() -> dict[str, Any]:
        for _ in range(1 if REQUESTS <= 2 else 3):
            deadline = time.monotonic() + 30
            while not running() and time.monotonic() < deadline:
                time.sleep(0.02)
            delay = rng.uniform(0.0, 0.4)
            time.sleep(delay)
            for w in lane.workers:
                w.kill9()
            kills.append(round(delay, 2))
            for w in lane.workers:
                w.start(wait=False)
        return {"kill_rounds": len(kills), "kill_delays_s": kills}

    run_fault("kill-9-worker", lane, inject)


def test_redis_restarted_empty(lane: Lane, stack: Stack) -> None:
    def inject() -> dict[str, Any]:
        time.sleep(0.3)
        stack.redis.restart(down_for=2.0)
        return {"redis_down_s": 2.0}

    run_fault("redis-restart", lane, inject)


def test_postgres_crash_restart_while_requests_arrive(lane: Lane, stack: Stack) -> None:
    def inject() -> dict[str, Any]:
        time.sleep(0.2)
        stack.pg.restart(down_for=2.0, mode="immediate")
        return {"postgres_down_s": 2.0}

    figures = run_fault("postgres-restart", lane, inject, rest_after=0.6)
    if REQUESTS > 1:
        assert figures["api_503"] > 0, "no request was filed during the outage"


def test_s3_server_stopped_for_a_while(lane: Lane, stack: Stack) -> None:
    def inject() -> dict[str, Any]:
        stack.s3.freeze()
        time.sleep(5.0)
        stack.s3.thaw()
        return {"s3_frozen_s": 5.0}

    run_fault("s3-stopped", lane, inject)


# ---------------------------------------------------------------------------------------
# Data faults: the request fails readably, and completes once repaired and retried
# ---------------------------------------------------------------------------------------


def blob_needed_by(lane: Lane, subject: int, model: str) -> tuple[str, bytes]:
    """Key and bytes of a recorded update blob that erasing ``subject`` must read (one the
    lineage has not subtracted yet)."""
    from api.blobs import get_store
    from unlearning_core.artifacts import open_artifact
    from unlearning_core.forget import ForgetSpec

    store = get_store()
    run = open_artifact(store, DATA_FAULT_MODELS[model])
    table = run.sample_table
    positions = ForgetSpec(subjects=(f"subject-{subject:04d}",)).resolve(
        table["sample_ids"], table["labels"], table["subject_ids"]
    )
    with session() as db:
        done = set(db.scalar(select(TrainingRun.ledger).join(Model).where(Model.name == model))["subtracted_steps"])
    steps = [int(s) for s in run.index.steps_holding(positions) if int(s) not in done]
    assert steps, "the subject's batches were all subtracted already"
    key = run.update_blobs[steps[0]].key
    return key, store.get(key)


def next_subject(lane: Lane) -> int:
    """Peek at the subject the next run_fault files first (and keep it first)."""
    subject = next(lane.subjects)
    lane.subjects = iter([subject, *lane.subjects])
    return subject


def test_blob_corrupted_behind_the_store(lane: Lane) -> None:
    from api.blobs import get_store

    store = get_store()
    key, original = blob_needed_by(lane, next_subject(lane), "digits-corrupt")
    # rewrite the object's bytes behind the store, keeping its recorded sha256 (object
    # metadata and run), as bit rot or a tampering writer would
    from unlearning_core.store.s3 import SHA256_HEADER

    recorded = store.stat(key).sha256
    forged = b"\0" * len(original)
    store.client.put_object(
        store.bucket, store.object_name(key), io.BytesIO(forged), len(forged), metadata={SHA256_HEADER: recorded}
    )
    figures = run_fault(
        "blob-corrupted", lane, lambda: None, repair=lambda: store.put(key, original), model="digits-corrupt"
    )
    assert any("failed its integrity check" in e for e in figures["errors"]), figures["errors"]


def test_blob_deleted(lane: Lane) -> None:
    from api.blobs import get_store

    store = get_store()
    key, original = blob_needed_by(lane, next_subject(lane), "digits-deleted")
    store.delete(key)
    figures = run_fault(
        "blob-deleted", lane, lambda: None, repair=lambda: store.put(key, original), model="digits-deleted"
    )
    assert any("no blob" in e for e in figures["errors"]), figures["errors"]


# ---------------------------------------------------------------------------------------
# Disk full on the local blob store
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_disk(stack: Stack) -> Iterator[tuple[Lane, Path]]:
    """A local blob store on a small tmpfs (root only) and its own database: the embedded
    deployment of ``lethe serve``, so the worker is the in-process one (no broker)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the full-disk fault needs root")
    mount = Path(tempfile.mkdtemp(prefix="lethe-full-disk-"))
    size = sum(p.stat().st_size for p in stack.runs.rglob("*") if p.is_file()) * 2 + 8 * 2**20
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        lane = open_lane(stack, "disk", blob_store=str(mount / "blobs"), redis_db=1, workers=0)
        lane.env.update(LETHE_BROKER_URL="", LETHE_WORKER_POLL_SECONDS="0.2")
        yield lane, mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def test_disk_full_on_the_local_blob_store(full_disk: tuple[Lane, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    lane, mount = full_disk
    lane.activate(monkeypatch)
    filler = mount / "filler"
    with filler.open("wb") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    from worker.embedded import EmbeddedWorker

    worker = EmbeddedWorker()
    worker.start()
    try:
        figures = run_fault("disk-full", lane, lambda: None, repair=filler.unlink)
    finally:
        worker.stop()
    assert any("disk full" in e for e in figures["errors"]), figures["errors"]
