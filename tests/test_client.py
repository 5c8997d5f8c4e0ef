"""The Python client (``lethe_client``) and the ``lethe request`` / ``lethe pull`` commands
against the real app served by uvicorn on a loopback port (the test PostgreSQL, a private
blob folder), with a trained digits MLP and erasures unlearned by the real worker code.

``LETHE_WITHDRAW_GRACE_HOURS=0``: an erasure withdraws the versions before it at once, so
a pinned version 0 answers 410 with its successor.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lethe_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    IntegrityError,
    NotFound,
    ReceiptInvalid,
    Retry,
    ServiceUnavailable,
    SignedReceipt,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from tests import test_dashboard_browser, test_observability
from tests.test_celery_workers import free_port
from tests.test_observability import MODEL, SUBJECT, install_model, work

pytestmark = [pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
#: Fixtures: the real app under uvicorn on a loopback port; the trained digits MLP run.
live_server = test_dashboard_browser.live_server
tiny_run = test_observability.tiny_run
FAST = Retry(attempts=3, backoff=0.01, max_backoff=0.05)


@pytest.fixture
def lethe(
    live_server: str,
    tiny_run: Path,
    db_session: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """The served app with the trained model, a key with the requester and registry
    scopes (and one with registry only), receipts signed with a key of this test, no
    withdrawal grace."""
    from api.auth.service import create_key
    from api.config import get_settings

    monkeypatch.setenv("LETHE_WITHDRAW_GRACE_HOURS", "0")
    monkeypatch.setenv("LETHE_RECEIPT_KEY_FILE", str(tmp_path / "keys" / "receipt.pem"))
    monkeypatch.delenv("LETHE_RECEIPT_SIGNING_KEY", raising=False)
    monkeypatch.delenv("LETHE_URL", raising=False)
    monkeypatch.delenv("LETHE_API_KEY", raising=False)
    get_settings.cache_clear()
    install_model(db_session, tiny_run)
    key = create_key(db_session, name="client", scopes=["requester", "registry"], tenant="acme")[1]
    registry = create_key(db_session, name="registry-only", scopes=["registry"], tenant="acme")[1]
    db_session.commit()
    return {"url": live_server, "key": key, "registry_key": registry, "cache": tmp_path / "cache"}


def work_soon(delay: float = 0.3) -> threading.Thread:
    """The worker processes the queue from another thread while the client waits."""

    def run() -> None:
        time.sleep(delay)
        work()

    thread = threading.Thread(target=run, name="client-test-worker", daemon=True)
    thread.start()
    return thread


def recorder() -> tuple[list[httpx.Response], dict[str, list[Callable[..., Any]]]]:
    """Event hooks recording every response the client gets (status and headers)."""
    seen: list[httpx.Response] = []
    return seen, {"response": [seen.append]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# Erasure requests: filing, idempotency, waiting for a tier, status, receipts
# ---------------------------------------------------------------------------------------


def test_file_replay_wait_and_verify_the_receipt(lethe: dict[str, Any]) -> None:
    with Client(lethe["url"], lethe["key"], retry=FAST) as client:
        filed = client.request_erasure(SUBJECT, models=[MODEL])
        assert filed.status == "queued" and not filed.replayed
        assert filed.idempotency_key.startswith("lethe-client-")  # made and returned
        again = client.request_erasure(SUBJECT, models=[MODEL], idempotency_key=filed.idempotency_key)
        assert again.id == filed.id and again.replayed
        with pytest.raises(Conflict) as conflict:  # same key, another body
            client.request_erasure("subject-0011", models=[MODEL], idempotency_key=filed.idempotency_key)
        assert conflict.value.status_code == 409 and conflict.value.detail
        with pytest.raises(ValidationFailed) as invalid:
            client.request_erasure(sample_ids=["no-such-sample"], models=[MODEL])
        assert invalid.value.status_code == 422

        queued = client.status(filed.id)
        assert queued.status == "queued" and queued.guarantee == "none"
        assert [j.model for j in queued.jobs] == [MODEL]

        worker = work_soon()
        done = client.wait(filed.id, "approximate", timeout=120, interval=0.1, max_interval=0.5)
        worker.join(60)
        assert done.status == "completed" and not done.exact and done.guarantee == "approximate"
        (job,) = done.jobs
        assert job.guarantee == "approximate" and job.approximate_version == 1 and job.version is not None
        assert job.version.number == 1 and job.exact_version is None
        with pytest.raises(WaitTimeout) as timeout:  # nothing makes it exact in half a second
            client.wait(filed.id, "exact", timeout=0.5, interval=0.1, max_interval=0.2)
        assert timeout.value.status is not None and timeout.value.status.status == "completed"

        # retrain answers exactly at once: wait for the exact tier
        exact = client.request_erasure("subject-0011", models=[MODEL], method="retrain")
        worker = work_soon()
        answered = client.wait(exact.id, "exact", timeout=120, interval=0.1, max_interval=0.5)
        worker.join(60)
        assert answered.exact and answered.guarantee == "exact" and answered.jobs[0].exact_version == 2

        key = client.receipt_key()
        receipt = client.receipt(filed.id, verify=True)
        assert receipt.verified_with == key.key_id == receipt.signature.key_id
        assert receipt.request_id == filed.id and receipt.stage == "approximate" and receipt.status == "completed"
        assert receipt.verify(key)["request_id"] == filed.id  # offline, with the kept key
        assert client.receipt(exact.id, verify=True, key=key.pem).stage == "exact"
        flipped = bytearray(receipt.raw)
        at = receipt.raw.index(b'"completed"') + 2
        flipped[at] ^= 0x01
        with pytest.raises(ReceiptInvalid, match="bad signature"):
            SignedReceipt.parse(bytes(flipped)).verify(key)
        with pytest.raises(NotFound) as missing:
            client.status("no-such-request")
        assert missing.value.status_code == 404


# ---------------------------------------------------------------------------------------
# Registry: models, versions, weights with the ETag cache, 410 Gone, reports
# ---------------------------------------------------------------------------------------


def test_pull_caches_verifies_and_follows_withdrawals(lethe: dict[str, Any], tmp_path: Path) -> None:
    seen, hooks = recorder()
    with Client(lethe["url"], lethe["key"], cache_dir=lethe["cache"], retry=FAST, event_hooks=hooks) as client:
        (summary,) = client.list_models()
        assert summary.name == MODEL and summary.status == "ready" and summary.latest_version == 0
        assert client.get_model(MODEL).versions == 1
        (v0,) = client.list_versions(MODEL)
        assert v0.number == 0 and v0.guarantee == "exact" and not v0.withdrawn
        assert client.get_version(MODEL, "latest").weights_sha256 == v0.weights_sha256

        out = tmp_path / "weights" / "model.safetensors"
        first = client.pull(MODEL, out=out)
        assert first.http_status == 200 and first.downloaded and first.version == 0
        assert first.sha256 == v0.weights_sha256 == sha256(out) and first.bytes_downloaded == v0.size
        cached = lethe["cache"] / "blobs" / f"{v0.weights_sha256}.safetensors"
        assert sha256(cached) == v0.weights_sha256

        seen.clear()
        second = client.pull(MODEL, out=out)
        assert second.http_status == 304 and not second.downloaded and second.bytes_downloaded == 0
        (answer,) = seen  # one exchange, answered 304 with the same ETag
        assert answer.status_code == 304 and answer.headers["etag"] == f'"{v0.weights_sha256}"'
        assert answer.request.headers["if-none-match"] == f'"{v0.weights_sha256}"'
        assert second.path == out and sha256(out) == v0.weights_sha256

        cached.write_bytes(b"tampered" + cached.read_bytes()[8:])  # the cache is changed on disk
        seen.clear()
        repaired = client.pull(MODEL)
        assert repaired.cache_repaired and repaired.downloaded and repaired.http_status == 200
        assert "if-none-match" not in seen[0].request.headers
        assert repaired.path == cached and sha256(cached) == v0.weights_sha256

        with pytest.raises(NotFound):
            client.get_version(MODEL, 7)
        with pytest.raises(ValueError, match="number or 'latest'"):
            client.pull(MODEL, "newest")

        # an erasure publishes v1 and withdraws v0 at once (no grace)
        filed = client.request_erasure(SUBJECT, models=[MODEL])
        assert work() == 1
        assert client.status(filed.id).status == "completed"
        v0_now, v1 = client.list_versions(MODEL)
        assert v0_now.withdrawn and v0_now.successor == 1 and filed.id in v0_now.withdrawn_for
        assert filed.id in v1.answers

        newer = client.pull(MODEL)  # `latest` changed: the ETag no longer matches, 200
        assert newer.http_status == 200 and newer.version == 1 and newer.sha256 == v1.weights_sha256
        assert client.pull(MODEL).http_status == 304
        assert client.pull(MODEL, 1).http_status == 304  # the number shares the cached blob
        with pytest.raises(Gone) as gone:
            client.pull(MODEL, 0)
        assert gone.value.status_code == 410 and gone.value.successor == 1
        assert gone.value.successor_url == f"{lethe['url']}/models/{MODEL}/versions/1"
        assert "withdrawn" in gone.value.detail

        report = client.report(MODEL, 1)
        assert report.version == 1 and report.media_type.startswith("text/html")
        assert "<html" in report.text().lower() and filed.id in report.text()
        pdf = client.report(MODEL, "latest", format="pdf")
        assert pdf.version == 1 and pdf.media_type == "application/pdf" and pdf.content.startswith(b"%PDF")
        with pytest.raises(Gone):
            client.report(MODEL, 0)

    with Client(lethe["url"], "lethe_not-a-real-key-000000000", retry=FAST) as stranger:
        with pytest.raises(Unauthorized) as refused:
            stranger.list_models()
        assert refused.value.status_code == 401
    with Client(lethe["url"], lethe["registry_key"], retry=FAST) as registry, pytest.raises(Forbidden):
        registry.request_erasure(SUBJECT)


# ---------------------------------------------------------------------------------------
# The async client: the same operations, awaited
# ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_does_the_same(lethe: dict[str, Any], tmp_path: Path) -> None:
    async with AsyncClient(lethe["url"], lethe["key"], cache_dir=lethe["cache"], retry=FAST) as client:
        filed = await client.request_erasure(SUBJECT, models=[MODEL], idempotency_key="async-1")
        assert filed.idempotency_key == "async-1"
        assert (await client.request_erasure(SUBJECT, models=[MODEL], idempotency_key="async-1")).replayed
        assert (await client.status(filed.id)).status == "queued"
        first = await client.pull(MODEL, out=tmp_path / "v0.safetensors")
        assert first.http_status == 200 and first.version == 0
        assert (await client.pull(MODEL)).http_status == 304

        worker = work_soon()
        done = await client.wait(filed.id, "approximate", timeout=120, interval=0.1, max_interval=0.5)
        worker.join(60)
        assert done.guarantee == "approximate" and done.jobs[0].version is not None

        versions = await client.list_versions(MODEL)
        assert [v.number for v in versions] == [0, 1] and versions[0].withdrawn
        latest = await client.pull(MODEL)
        assert latest.http_status == 200 and latest.version == 1 and sha256(latest.path) == versions[1].weights_sha256
        with pytest.raises(Gone) as gone:
            await client.pull(MODEL, 0)
        assert gone.value.successor == 1
        receipt = await client.receipt(filed.id, verify=True)
        assert receipt.stage == "approximate"
        assert (await client.report(MODEL, 1)).content.startswith(b"<!")


# ---------------------------------------------------------------------------------------
# Retries, configuration
# ---------------------------------------------------------------------------------------


def test_retries_503_and_connection_failures(lethe: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from api.config import get_settings

    # A real 503 from the server: the receipt signing key is unusable. Retried, then raised.
    monkeypatch.setenv("LETHE_RECEIPT_SIGNING_KEY", "not-a-key-at-all")
    get_settings.cache_clear()
    seen, hooks = recorder()
    with Client(lethe["url"], retry=FAST, event_hooks=hooks) as client, pytest.raises(ServiceUnavailable) as unavailable:
        client.receipt_key()
    assert unavailable.value.status_code == 503 and "signing key" in unavailable.value.detail
    assert [r.status_code for r in seen] == [503, 503, 503]

    # Nothing listens: every attempt fails to connect.
    attempts: list[httpx.Request] = []
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(dead, retry=FAST, event_hooks={"request": [attempts.append]}) as client, \
            pytest.raises(ConnectionFailed, match="after 3 attempt"):
        client.list_models()
    assert len(attempts) == 3

    # A 503 then an answer: the filing is sent again with the same Idempotency-Key.
    keys: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            return httpx.Response(503, json={"detail": "database busy"}, headers={"Retry-After": "0"})
        return httpx.Response(202, json={"id": "r1", "status": "queued", "status_url": "/requests/r1/status",
                                          "due_at": "2030-01-01T00:00:00Z"})

    with Client("http://lethe.test", "k", retry=FAST, transport=httpx.MockTransport(flaky)) as client:
        filed = client.request_erasure(SUBJECT)
    assert filed.id == "r1" and len(keys) == 2 and keys[0] == keys[1] == filed.idempotency_key


def test_weights_that_do_not_match_their_sha256_are_refused(tmp_path: Path) -> None:
    """A body that does not hash to its ETag, or to the version's recorded weights_sha256,
    is refused and leaves nothing in the cache (the server cannot be made to send one)."""
    body = b"not the weights"
    recorded = {"etag": "0" * 64, "version": "0" * 64}

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/weights"):
            return httpx.Response(200, content=body, headers={"ETag": f'"{recorded["etag"]}"', "X-Lethe-Version": "3"})
        assert request.url.path == "/models/m/versions/3"
        return httpx.Response(200, json={
            "model": "m", "number": 3, "method": "amnesiac", "guarantee": "approximate",
            "created_at": "2030-01-01T00:00:00Z", "weights_sha256": recorded["version"], "size": len(body),
        })

    cache = tmp_path / "cache"
    with Client("http://lethe.test", "k", cache_dir=cache, retry=FAST, transport=httpx.MockTransport(server)) as client:
        with pytest.raises(IntegrityError, match="not to their ETag"):
            client.pull("m")
        recorded["etag"] = hashlib.sha256(body).hexdigest()
        with pytest.raises(IntegrityError, match="not to the version's weights_sha256"):
            client.pull("m", out=tmp_path / "m.safetensors")
    assert not list((cache / "blobs").iterdir()) and not (tmp_path / "m.safetensors").exists()


def test_url_and_key_come_from_the_environment(lethe: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_URL", lethe["url"])
    monkeypatch.setenv("LETHE_API_KEY", lethe["key"])
    with Client() as client:
        assert client.base_url == lethe["url"]
        assert [m.name for m in client.list_models()] == [MODEL]
    with pytest.raises(ValueError, match="http"):
        Client("ftp://example.org")


# ---------------------------------------------------------------------------------------
# The CLI commands
# ---------------------------------------------------------------------------------------


def test_cli_request_and_pull(lethe: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    runner = CliRunner()
    auth = ["--url", lethe["url"], "--api-key", lethe["key"]]
    worker = work_soon(0.5)
    filed = runner.invoke(app, ["request", "--subject", SUBJECT, "--model", MODEL, "--wait", "approximate",
                                "--idempotency-key", "cli-1", "--timeout", "120", "--json", *auth])
    worker.join(60)
    assert filed.exit_code == 0, filed.output
    out = json.loads(filed.stdout.strip().splitlines()[-1])
    assert out["idempotency_key"] == "cli-1" and out["status"] == "completed"
    assert out["guarantee"] == "approximate" and out["jobs"][0]["version"] == 1
    replay = runner.invoke(app, ["request", "--subject", SUBJECT, "--model", MODEL, "--idempotency-key", "cli-1", *auth])
    assert replay.exit_code == 0 and out["id"] in replay.stdout and "replayed" in replay.stdout

    weights = tmp_path / "cli.safetensors"
    pull = ["pull", MODEL, "--out", str(weights), "--cache-dir", str(tmp_path / "cli-cache"), *auth]
    got = runner.invoke(app, [*pull, "--json"])
    assert got.exit_code == 0, got.output
    first = json.loads(got.stdout.strip().splitlines()[-1])
    assert first["version"] == 1 and first["http_status"] == 200 and sha256(weights) == first["sha256"]
    again = runner.invoke(app, pull)
    assert again.exit_code == 0 and "not modified (304)" in again.stdout and f"{MODEL} v1" in again.stdout

    gone = runner.invoke(app, [*pull, "--version", "0"])
    assert gone.exit_code == 2 and "error: 410" in gone.stderr and "successor: version 1" in gone.stderr
    bad = runner.invoke(app, ["pull", MODEL, "--url", lethe["url"], "--api-key", "lethe_wrong-000000000000"])
    assert bad.exit_code == 2 and "error: 401" in bad.stderr and "LETHE_API_KEY" in bad.stderr
    missing = runner.invoke(app, ["request", *auth])
    assert missing.exit_code == 2 and "--subject" in missing.output
    timeout = runner.invoke(app, ["request", "--subject", SUBJECT, "--model", MODEL, "--wait", "exact",
                                  "--timeout", "0.3", "--idempotency-key", "cli-1", *auth])
    assert timeout.exit_code == 3 and "did not reach the exact tier" in timeout.stderr

    # the console script in a process of its own: the same command, the same exit status
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LETHE_URL": lethe["url"], "LETHE_API_KEY": lethe["key"]}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lethe")), "pull", MODEL, "--version", "0",
         "--cache-dir", str(tmp_path / "cli-cache")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 2 and "successor: version 1" in proc.stderr, proc.stderr
