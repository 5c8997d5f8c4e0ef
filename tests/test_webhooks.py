"""Webhooks: registration, signed deliveries of real events to a real HTTP receiver, retries
with backoff, failure after the last attempt, requeue of a dead worker's claim.

On the real PostgreSQL; the receiver is an ``http.server`` thread on 127.0.0.1 that records
what it gets. Signatures are checked with the verification snippet of
``docs/operations/webhooks.md`` itself. Time is simulated by moving ``next_attempt_at``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from api.database.core import get_sessionmaker, utcnow
from api.erasure.models import RequestJob
from api.webhooks import flows, service
from api.webhooks.models import Webhook, WebhookDelivery
from tests.conftest import bearer
from tests.test_celery_workers import copy_run, register_digits, register_model
from tests.test_compaction import compaction_run, file_now, requester, subject, train_claimed, work

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations" / "webhooks.md"


def documented_verify() -> Any:
    """The ``verify`` function of the docs' Python snippet, executed as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    code = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["verify"]


# ---------------------------------------------------------------------------------------
# A real receiver
# ---------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST; answers ``self.code`` (200)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.code = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                self.send_response(receiver.code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def register(client, key: str, url: str, **extra: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = await client.post("/webhooks", json={"url": url, **extra}, headers=bearer(key))
    assert resp.status_code == 201, resp.text
    return resp.json()


def deliver() -> int:
    return flows.deliver_due(session_factory=get_sessionmaker())


def deliveries(db) -> list[WebhookDelivery]:  # type: ignore[no-untyped-def]
    db.expire_all()
    return list(db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def emit(tenant: str = "acme", kind: str = "request.completed") -> list[int]:
    with get_sessionmaker()() as db:
        ids = service.emit(db, tenant=tenant, kind=kind, payload={"request_id": "r-1", "versions": []})
        db.commit()
        return ids


def make_due(db, delivery_id: int) -> None:  # type: ignore[no-untyped-def]
    """Time passes: the scheduled retry is due now."""
    db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(next_attempt_at=utcnow() - timedelta(seconds=1))
    )
    db.commit()


@pytest.fixture
def model_m(db_session, api_keys, recorded_runs) -> Any:  # type: ignore[no-untyped-def]
    """Model ``m``: the recorded partial-amnesiac digits run (test_compaction's ``partial_model``)."""
    from api.blobs import get_store

    store = get_store()
    copy_run(recorded_runs, store, "celery-small")
    register_model(db_session, store, register_digits(db_session), "m", "celery-small")
    return store


@pytest.fixture
def globex_admin(db_session) -> str:  # type: ignore[no-untyped-def]
    from api.auth.service import create_key

    key = create_key(db_session, name="globex-admin", scopes=["admin"], tenant="globex")[1]
    db_session.commit()
    return key


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------


async def test_register_list_delete_and_tenants(client, api_keys, globex_admin, db_session) -> None:  # type: ignore[no-untyped-def]
    admin = api_keys["admin"]
    created = await register(client, admin, "https://serving.example.com/hook?team=ml")
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["events"] == ["version.published", "version.withdrawn", "request.completed", "request.exact"]
    only = await register(client, admin, "http://127.0.0.1:8080/x", events=["request.exact", "request.exact"])
    assert only["events"] == ["request.exact"] and only["secret"] != created["secret"]

    listing = (await client.get("/webhooks", headers=bearer(admin))).json()
    assert [w["id"] for w in listing] == [created["id"], only["id"]]
    assert all("secret" not in w for w in listing)  # shown once, at creation

    for url, problem in (
        ("ftp://example.com/hook", "http or https"),
        ("http://", "no host"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://example.com/" + "a" * 2100, "2048"),
        ("https://example.com/hook#x", "fragment"),
        ("https://exa mple.com/", "whitespace"),
        ("example.com/hook", "http or https"),
        ("https://example.com:99999/", "parse"),
    ):
        resp = await client.post("/webhooks", json={"url": url}, headers=bearer(admin))
        assert resp.status_code == 422 and problem in resp.json()["detail"], (url, resp.text)
    bad_event = await client.post("/webhooks", json={"url": "https://e.com", "events": ["x"]}, headers=bearer(admin))
    assert bad_event.status_code == 422
    for key in (api_keys["requester"], api_keys["registry"]):
        assert (await client.get("/webhooks", headers=bearer(key))).status_code == 403

    # Another tenant's admin sees none of them and cannot touch them.
    assert (await client.get("/webhooks", headers=bearer(globex_admin))).json() == []
    for method, path in (("DELETE", f"/webhooks/{created['id']}"), ("GET", f"/webhooks/{created['id']}/deliveries")):
        resp = await client.request(method, path, headers=bearer(globex_admin))
        assert resp.status_code == 404 and f"no webhook {created['id']}" in resp.json()["detail"]
    # ... nor does an event of its tenant reach them
    assert emit(tenant="globex") == []

    assert (await client.delete(f"/webhooks/{only['id']}", headers=bearer(admin))).status_code == 204
    assert (await client.delete(f"/webhooks/{only['id']}", headers=bearer(admin))).status_code == 404
    assert (await client.get(f"/webhooks/{only['id']}/deliveries", headers=bearer(admin))).status_code == 404
    assert [w["id"] for w in (await client.get("/webhooks", headers=bearer(admin))).json()] == [created["id"]]
    gone = db_session.get(Webhook, only["id"])
    assert gone.active is False and gone.secret == ""
    assert (await client.get("/webhooks/999999/deliveries", headers=bearer(admin))).status_code == 404


# ---------------------------------------------------------------------------------------
# Real events, signed
# ---------------------------------------------------------------------------------------


async def test_an_erasure_delivers_signed_events_with_ids_only(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, model_m, receiver
) -> None:
    store = model_m
    hook = await register(client, api_keys["admin"], receiver.url)
    request_id = file_now(subject(1), "m")
    assert work(store) == 1
    assert receiver.received == []  # events are rows until a worker delivers them
    assert deliver() == 3

    verify = documented_verify()
    by_type: dict[str, dict[str, Any]] = {}
    for got in receiver.received:
        headers, body = got["headers"], got["body"]
        assert got["path"] == "/hook" and headers["content-type"] == "application/json"
        assert verify(hook["secret"], body, headers["lethe-signature"])
        assert not verify("whsec_another-secret", body, headers["lethe-signature"])
        assert not verify(hook["secret"], body + b" ", headers["lethe-signature"])
        t = int(headers["lethe-signature"].split(",")[0][2:])
        old = flows.sign(hook["secret"], body, t - 3600)
        assert not verify(hook["secret"], body, old)  # a replayed, old signature
        event = json.loads(body)
        assert event["id"] == headers["lethe-event-id"] and event["type"] == headers["lethe-event"]
        by_type[event["type"]] = event

    assert set(by_type) == {"version.published", "version.withdrawn", "request.completed"}
    assert by_type["version.published"]["data"] == {
        "model": "m", "version": 1, "method": "partial-amnesiac", "guarantee": "approximate",
    }
    withdrawn = by_type["version.withdrawn"]["data"]
    assert (withdrawn["model"], withdrawn["version"], withdrawn["successor"]) == ("m", 0, 1)
    deadline = datetime.fromisoformat(withdrawn["effective_at"])
    assert timedelta(hours=23) < deadline - utcnow() <= timedelta(hours=24)  # the grace deadline
    assert by_type["request.completed"]["data"] == {
        "request_id": request_id, "versions": [{"model": "m", "version": 1}],
    }

    # Ids only: no subject id, no sample id, no tenant, anywhere in what left.
    sample_ids = db_session.scalar(select(RequestJob.sample_ids).where(RequestJob.request_id == request_id))
    assert sample_ids
    everything = b"".join(r["body"] + json.dumps(r["headers"]).encode() for r in receiver.received).decode()
    assert subject(1) not in everything and "acme" not in everything
    assert not [s for s in sample_ids if json.dumps(s) in everything]

    page = (await client.get(f"/webhooks/{hook['id']}/deliveries", headers=bearer(api_keys["admin"]))).json()
    assert page["total"] == 3
    assert {(d["status"], d["attempts"], d["last_status_code"]) for d in page["items"]} == {("completed", 1, 200)}
    assert deliver() == 0  # nothing twice


async def test_a_compaction_emits_request_exact(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, model_m, receiver, monkeypatch
) -> None:
    monkeypatch.setenv("LETHE_WITHDRAW_GRACE_HOURS", "0")
    from api.config import get_settings

    get_settings.cache_clear()
    store = model_m
    await register(client, api_keys["admin"], receiver.url, events=["request.exact", "version.published", "version.withdrawn"])
    request_id = file_now(subject(1), "m")
    assert work(store) == 1
    resp = await client.post("/models/m/compact", headers=bearer(api_keys["admin"]))
    assert resp.status_code == 202, resp.text
    assert train_claimed(compaction_run(db_session, "m").id, store)
    deliver()

    events = receiver.events()
    kinds = [e["type"] for e in events]
    assert "request.completed" not in kinds  # filtered out by the webhook's events
    exact = [e["data"] for e in events if e["type"] == "request.exact"]
    assert exact == [{"request_id": request_id, "models": ["m"]}]
    published = [e["data"] for e in events if e["type"] == "version.published"]
    assert published[-1] == {"model": "m", "version": 2, "method": "compact", "guarantee": "exact"}
    withdrawn = sorted(
        (e["data"]["version"], e["data"]["successor"], e["data"]["reason"])
        for e in events if e["type"] == "version.withdrawn"
    )
    assert withdrawn == [(0, 1, "erasure"), (1, 2, "compaction")]
    for e in events:  # grace 0: in force at once
        if e["type"] == "version.withdrawn":
            assert datetime.fromisoformat(e["data"]["effective_at"]) <= utcnow()
    assert len({e["id"] for e in events}) == len(events)


async def test_an_exact_method_emits_request_exact_at_once(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, model_m, receiver
) -> None:
    from api.erasure import service as erasure
    from api.erasure.schemas import ErasureRequestCreate

    await register(client, api_keys["admin"], receiver.url, events=["request.exact", "version.published"])
    with get_sessionmaker()() as db:
        request, _ = erasure.create(
            db=db, principal=requester(db), idempotency_key=None,
            body=ErasureRequestCreate(subject_id=subject(2), models=["m"], method="retrain"),
        )
    assert work(model_m) == 1
    deliver()
    events = {e["type"]: e["data"] for e in receiver.events()}
    assert events["request.exact"] == {"request_id": request.id, "models": ["m"]}
    assert events["version.published"]["guarantee"] == "exact"


# ---------------------------------------------------------------------------------------
# Retries, failure, dead workers
# ---------------------------------------------------------------------------------------


async def test_endpoint_down_is_retried_with_backoff_and_delivered_once(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, receiver
) -> None:
    hook = await register(client, api_keys["admin"], receiver.url)
    (delivery_id,) = emit()
    receiver.code = 500
    assert deliver() == 1
    (row,) = deliveries(db_session)
    assert (row.status, row.attempts, row.last_status_code) == ("queued", 1, 500)
    assert "HTTP 500" in row.error
    wait = row.next_attempt_at - utcnow()
    assert timedelta(seconds=5) < wait <= timedelta(seconds=10)  # the first backoff step
    assert deliver() == 0  # not due yet
    assert flows.process_delivery(session_factory=get_sessionmaker(), delivery_id=delivery_id) == "skipped"

    make_due(db_session, delivery_id)
    receiver.code = 503
    assert deliver() == 1
    (row,) = deliveries(db_session)
    assert row.attempts == 2 and timedelta(seconds=25) < row.next_attempt_at - utcnow() <= timedelta(seconds=30)

    make_due(db_session, delivery_id)
    receiver.code = 200
    assert deliver() == 1
    (row,) = deliveries(db_session)
    assert (row.status, row.attempts, row.last_status_code, row.error) == ("completed", 3, 200, None)
    ids = {r["headers"]["lethe-event-id"] for r in receiver.received}
    assert len(receiver.received) == 3 and ids == {row.event_id}  # one event id to de-duplicate on
    assert [r["headers"]["lethe-delivery-attempt"] for r in receiver.received] == ["1", "2", "3"]
    assert len({r["body"] for r in receiver.received}) == 1  # the same body every time

    page = (await client.get(f"/webhooks/{hook['id']}/deliveries", headers=bearer(api_keys["admin"]))).json()
    assert page["items"][0]["status"] == "completed" and page["items"][0]["attempts"] == 3

    assert [flows.backoff(n).total_seconds() for n in (1, 2, 3, 4, 8, 20)] == [10, 30, 90, 270, 3600, 3600]


async def test_refused_until_the_last_attempt_then_failed_and_visible(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, monkeypatch
) -> None:
    monkeypatch.setenv("LETHE_WEBHOOK_MAX_ATTEMPTS", "3")
    from api.config import get_settings

    get_settings.cache_clear()
    hook = await register(client, api_keys["admin"], f"http://127.0.0.1:{closed_port()}/hook")
    (delivery_id,) = emit()
    for attempt in (1, 2, 3):
        if attempt > 1:
            make_due(db_session, delivery_id)
        assert deliver() == 1
        (row,) = deliveries(db_session)
        assert row.attempts == attempt and row.last_status_code is None and "ConnectError" in row.error
    assert row.status == "failed" and row.finished_at is not None and "gave up after 3 attempts" in row.error
    make_due(db_session, delivery_id)
    assert deliver() == 0  # failed is final

    admin = bearer(api_keys["admin"])
    page = (await client.get(f"/webhooks/{hook['id']}/deliveries?status=failed", headers=admin)).json()
    assert page["total"] == 1 and page["items"][0]["event"] == "request.completed"
    assert "ConnectError" in page["items"][0]["error"]
    assert (await client.get(f"/webhooks/{hook['id']}/deliveries?status=completed", headers=admin)).json()["total"] == 0

    # Deleting a webhook cancels what it still had queued.
    (queued,) = emit()
    assert (await client.delete(f"/webhooks/{hook['id']}", headers=admin)).status_code == 204
    assert db_session.get(WebhookDelivery, queued).status == "cancelled"
    assert deliver() == 0


async def test_a_dead_workers_claim_is_requeued_and_delivered(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, receiver, monkeypatch
) -> None:
    monkeypatch.setenv("LETHE_JOB_STALE_SECONDS", "5")
    from api.config import get_settings

    get_settings.cache_clear()
    await register(client, api_keys["admin"], receiver.url)
    (delivery_id,) = emit()
    dead = flows.claim(session_factory=get_sessionmaker())  # ... and the worker dies
    assert dead is not None and dead.delivery_id == delivery_id
    assert flows.claim(session_factory=get_sessionmaker(), delivery_id=delivery_id) is None  # alive
    assert flows.requeue_abandoned(session_factory=get_sessionmaker()) == []

    db_session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(heartbeat_at=utcnow() - timedelta(seconds=60))
    )
    db_session.commit()
    assert flows.requeue_abandoned(session_factory=get_sessionmaker()) == [delivery_id]
    assert deliver() == 1
    (row,) = deliveries(db_session)
    assert (row.status, row.attempts) == ("completed", 2)
    # the dead attempt, were it to finish late, records nothing
    late = flows.Outcome(False, 500, "late")
    assert flows.record(session_factory=get_sessionmaker(), claim=dead, outcome=late) is None
    assert deliveries(db_session)[0].status == "completed"
    assert len(receiver.received) == 1


class FakeBroker:
    """What the dispatcher sends (a Celery app's ``send_task``), without a broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int], str]] = []

    def send_task(self, name: str, args: list[int], queue: str) -> None:
        self.sent.append((name, args, queue))

    def connection_for_write(self) -> Any:
        raise ConnectionError("no broker in this test")


async def test_dispatcher_enqueues_due_deliveries_and_the_task_delivers(  # type: ignore[no-untyped-def]
    client, api_keys, db_session, receiver
) -> None:
    from worker.dispatch import dispatch_once
    from worker.tasks import deliver_webhook

    await register(client, api_keys["admin"], receiver.url)
    (delivery_id,) = emit()
    broker = FakeBroker()
    report = dispatch_once(broker)
    assert report["enqueued_webhooks"] == 1
    assert ("lethe.deliver_webhook", [delivery_id], "cpu") in broker.sent
    broker.sent.clear()
    dispatch_once(broker)  # its message is on its way: not sent again this stale period
    assert not [s for s in broker.sent if s[0] == "lethe.deliver_webhook"]

    assert deliver_webhook.apply(args=[delivery_id]).get() == "completed"
    assert deliver_webhook.apply(args=[delivery_id]).get() == "skipped"  # a duplicate message
    assert len(receiver.received) == 1
    assert deliveries(db_session)[0].status == "completed"
