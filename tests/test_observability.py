"""Observability against the real service: Prometheus ``/metrics`` after real traffic (a
request filed over HTTP and unlearned by the real worker code on a tiny digits model),
``X-Request-ID`` handling, and JSON log lines that carry the request id from the API into
the worker: the embedded worker (in-process) and a real ``lethe worker`` (Celery, Redis).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api.erasure.models import ErasureRequest
from api.observability.context import log_context
from api.observability.logs import make_handler
from tests.conftest import bearer
from tests.reliability_world import train_world_run
from tests.service_fixtures import insert_digits_dataset, insert_trained_model
from tests.test_celery_workers import broker, free_port, wait_for, workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio

CPU = torch.device("cpu")
RUN_ID = "observability-tiny"
MODEL = "obs-digits"
METHOD = "partial-amnesiac"
SUBJECT = "subject-0004"


def train_tiny_run(root: Path, run_id: str = RUN_ID) -> Path:
    """One real digits MLP run with partial recording (one epoch, about a second on CPU)."""
    return train_world_run(root, run_id)


def install_model(db: Any, runs: Path, name: str = MODEL, run_id: str = RUN_ID) -> None:
    """The trained run in this test's blob store and database, as training via the API leaves it."""
    from api.blobs import get_store

    shutil.copytree(runs, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    dataset = insert_digits_dataset(db)
    insert_trained_model(
        db, store=get_store(), dataset_id=dataset.id, name=name, run_id=run_id, architecture="mlp", method=METHOD
    )
    db.commit()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("observability-runs"))


@pytest.fixture
def model(service_env: str, tiny_run: Path, db_session: Any) -> str:
    install_model(db_session, tiny_run)
    return MODEL


def work() -> int:
    """The embedded worker's real processing of whatever is queued."""
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from worker.embedded import process_pending

    return process_pending(session_factory=get_sessionmaker(), store=get_store(), device=CPU)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus exposition (``None`` if absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def scrape(client: Any, key: str) -> str:
    resp = await client.get("/metrics", headers=bearer(key))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger also writes our JSON lines to a buffer (INFO) for the test."""
    buffer = io.StringIO()
    handler = make_handler("json", buffer)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(text: str) -> list[dict[str, Any]]:
    """Every JSON object line of a log (other lines, e.g. a traceback's, are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# ---------------------------------------------------------------------------------------


async def test_request_id_is_echoed_generated_or_replaced(client) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "trace-0123:abc.DEF_9"})
    assert given.headers["X-Request-ID"] == "trace-0123:abc.DEF_9"

    made = await client.get("/healthz")
    made2 = await client.get("/healthz")
    rid = made.headers["X-Request-ID"]
    assert len(rid) == 32 and int(rid, 16) >= 0 and rid != made2.headers["X-Request-ID"]

    # a forged or oversized id never reaches the logs: replaced by a fresh one
    for bad in ("two words", "x" * 200, "-leading-dash", 'quote"d'):
        resp = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert resp.headers["X-Request-ID"] != bad and len(resp.headers["X-Request-ID"]) == 32
    # errors carry it too
    missing = await client.get("/requests/nope/status", headers={"X-Request-ID": "err-1"})
    assert missing.status_code == 401 and missing.headers["X-Request-ID"] == "err-1"


async def test_metrics_needs_an_admin_key_unless_public(client, api_keys, monkeypatch) -> None:
    from api.config import get_settings

    assert (await client.get("/metrics")).status_code == 401
    denied = await client.get("/metrics", headers=bearer(api_keys["requester"]))
    assert denied.status_code == 403 and "admin" in denied.json()["detail"]
    assert (await client.get("/metrics", headers=bearer(api_keys["admin"]))).status_code == 200

    monkeypatch.setenv("LETHE_METRICS_PUBLIC", "true")
    get_settings.cache_clear()
    public = await client.get("/metrics")
    assert public.status_code == 200 and "lethe_erasure_requests" in public.text


async def test_metrics_after_real_traffic(client, api_keys, model) -> None:
    admin, requester = api_keys["admin"], api_keys["requester"]
    before = await scrape(client, admin)
    jobs_before = sample(before, "lethe_job_duration_seconds_count", method=METHOD, outcome="completed") or 0
    unlearn_before = sample(before, "lethe_unlearn_seconds_count", method=METHOD) or 0
    filed_before = sample(
        before, "lethe_http_request_duration_seconds_count", method="POST", route="/erasure-requests", status="202"
    ) or 0
    assert sample(before, "lethe_erasure_requests", state="completed") == 0
    assert sample(before, "lethe_metrics_database_up") == 1

    resp = await client.post("/erasure-requests", json={"subject_id": SUBJECT}, headers=bearer(requester))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["id"]
    await client.get(f"/requests/{rid}/status", headers=bearer(requester))
    queued = await scrape(client, admin)
    assert sample(queued, "lethe_erasure_requests", state="queued") == 1
    assert sample(queued, "lethe_queue_depth", kind="erasure_job") == 1
    assert sample(queued, "lethe_queue_depth", kind="training_run") == 0

    assert work() == 1
    after = await scrape(client, admin)
    assert sample(after, "lethe_erasure_requests", state="queued") == 0
    assert sample(after, "lethe_erasure_requests", state="completed") == 1
    assert sample(after, "lethe_erasure_requests_overdue") == 0
    assert sample(after, "lethe_queue_depth", kind="erasure_job") == 0
    assert sample(after, "lethe_jobs_running") == 0
    assert sample(after, "lethe_job_duration_seconds_count", method=METHOD, outcome="completed") == jobs_before + 1
    job_seconds = sample(after, "lethe_job_duration_seconds_sum", method=METHOD, outcome="completed")
    unlearn_seconds = sample(after, "lethe_unlearn_seconds_sum", method=METHOD)
    assert job_seconds is not None and unlearn_seconds is not None and job_seconds > unlearn_seconds > 0
    assert sample(after, "lethe_unlearn_seconds_count", method=METHOD) == unlearn_before + 1
    # latency by route template, never by raw path (one series for every request id)
    assert sample(
        after, "lethe_http_request_duration_seconds_count", method="POST", route="/erasure-requests", status="202"
    ) == filed_before + 1
    assert sample(
        after, "lethe_http_request_duration_seconds_count",
        method="GET", route="/requests/{request_id}/status", status="200",
    ) >= 1
    assert rid not in after


async def test_json_logs_carry_the_request_id_from_api_into_the_worker(
    client, api_keys, model, db_session, json_log
) -> None:
    trace = "trace-embedded-7f3a"
    resp = await client.post(
        "/erasure-requests", json={"subject_id": SUBJECT}, headers={**bearer(api_keys["requester"]), "X-Request-ID": trace}
    )
    assert resp.status_code == 202 and resp.headers["X-Request-ID"] == trace
    rid = resp.json()["id"]
    assert db_session.scalar(select(ErasureRequest.http_request_id).where(ErasureRequest.id == rid)) == trace

    assert work() == 1
    records = lines(json_log.getvalue())
    for r in records:  # every line has the fixed fields
        assert {"time", "level", "logger", "message", "request_id"} <= r.keys(), r
    api_lines = [r for r in records if r["logger"] == "lethe.http" and r["request_id"] == trace]
    assert len(api_lines) == 1 and api_lines[0]["status"] == 202 and api_lines[0]["route"] == "/erasure-requests"
    done = [r for r in records if r["logger"] == "lethe.erasure" and "done" in r["message"]]
    assert len(done) == 1, records
    assert done[0]["request_id"] == trace and done[0]["erasure_request_id"] == rid
    assert isinstance(done[0]["job_id"], int) and done[0]["model"] == MODEL and done[0]["level"] == "INFO"
    # outside a request nothing is bound
    logging.getLogger("lethe.test").warning("no request here")
    last = lines(json_log.getvalue())[-1]
    assert last["request_id"] is None and "erasure_request_id" not in last


def test_text_format_shows_the_request_id() -> None:
    buffer = io.StringIO()
    logger = logging.getLogger("lethe.test.text")
    handler = make_handler("text", buffer)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with log_context(request_id="abc-1", job_id=3):
            logger.warning("hello")
        logger.warning("bye")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = buffer.getvalue().splitlines()
    assert first.endswith("WARNING lethe.test.text [abc-1] hello")
    assert second.endswith("[None] bye")
    with pytest.raises(ValueError, match="unknown log format"):
        make_handler("xml")


@pytest.mark.timeout(180)
async def test_celery_worker_logs_the_request_id_and_serves_its_job_metrics(  # noqa: F811
    client, api_keys, model, workers  # noqa: F811
) -> None:
    port = free_port()
    worker = workers("obs", LETHE_LOG_FORMAT="json", LETHE_WORKER_METRICS_PORT=str(port))
    trace = "trace-celery-42"
    resp = await client.post(
        "/erasure-requests", json={"subject_id": SUBJECT}, headers={**bearer(api_keys["requester"]), "X-Request-ID": trace}
    )
    assert resp.status_code == 202, resp.text
    rid = resp.json()["id"]
    status = (await wait_for(client, api_keys["requester"], [rid], timeout=60))[rid]
    assert status["status"] == "completed", status

    def done_line() -> bool:  # the line is written just after the result commits
        return any(r.get("erasure_request_id") == rid and "done" in r["message"] for r in lines(worker.log()))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not done_line():
        time.sleep(0.1)
    records = lines(worker.log())
    assert any(" ready." in r["message"] for r in records), worker.log()[-2000:]  # Celery's own lines are JSON
    mine = [r for r in records if r.get("erasure_request_id") == rid]
    assert mine and all(r["request_id"] == trace for r in mine), worker.log()[-3000:]
    assert any(r["logger"] == "lethe.erasure" and "done" in r["message"] for r in mine)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert sample(text, "lethe_job_duration_seconds_count", method=METHOD, outcome="completed") == 1
    assert sample(text, "lethe_unlearn_seconds_count", method=METHOD) == 1
    assert "lethe_erasure_requests" not in text  # the database gauges are the API's alone
