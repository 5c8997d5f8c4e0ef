"""Signed erasure receipts (issue #15, item 4), on the real PostgreSQL.

A receipt is computed from the database when asked, grows with the tiers (approximate, then
exact after a compaction), is signed with the service's Ed25519 key (``GET /receipt-key``)
and verifies offline, in Python and with ``lethe receipt verify``: any changed byte fails.
It lists the blobs the purge deleted, and leaves the raw data to its owner.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.audit.service import verify as verify_chain
from api.compaction import service as compaction
from api.config import get_settings
from api.database.core import get_sessionmaker, utcnow
from api.datasets.models import Sample
from api.erasure.models import RequestJob
from api.main import create_app
from api.receipts.schemas import SignedReceipt
from api.registry.models import Model
from tests import test_compaction
from tests.conftest import bearer
from tests.test_compaction import file_now, subject, train_claimed, work
from unlearning_core import receipts
from unlearning_core.compaction import Trigger

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

#: Model ``m`` (the recorded partial-amnesiac digits run), the fixture of the compaction tests.
partial_model = test_compaction.partial_model


@pytest.fixture(autouse=True)
def key_file(service_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test signs with a key of its own, kept in its temporary folder (not var/)."""
    path = tmp_path / "keys" / "receipt-signing-key.pem"
    monkeypatch.setenv("LETHE_RECEIPT_KEY_FILE", str(path))
    monkeypatch.delenv("LETHE_RECEIPT_SIGNING_KEY", raising=False)
    get_settings.cache_clear()
    return path


async def fetch_receipt(client: Any, key: str, request_id: str) -> bytes:
    resp = await client.get(f"/requests/{request_id}/receipt", headers=bearer(key))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return resp.content


async def served_key(client: Any) -> dict[str, Any]:
    resp = await client.get("/receipt-key")
    assert resp.status_code == 200, resp.text
    return resp.json()


def flipped(document: bytes, at: int) -> bytes:
    return document[:at] + bytes([document[at] ^ 0x01]) + document[at + 1 :]


async def test_a_completed_request_has_an_approximate_receipt_that_verifies(
    client, api_keys, db_session, partial_model, tmp_path, lethe_main
) -> None:
    rid = file_now(subject(1), "m")
    assert work(partial_model) == 1
    document = await fetch_receipt(client, api_keys["requester"], rid)
    served = await served_key(client)
    public = receipts.load_public_key(served["public_key"])
    assert served["alg"] == "Ed25519" and served["key_id"] == receipts.key_id(public)
    assert receipts.key_id(receipts.load_public_key(served["pem"])) == served["key_id"]

    receipt = receipts.verify(document, public)
    SignedReceipt.model_validate_json(document)  # the documented schema is what is served
    assert json.loads(document)["signature"]["key_id"] == served["key_id"]
    assert receipt["format"] == receipts.FORMAT
    assert (receipt["request_id"], receipt["tenant"], receipt["subject_id"]) == (rid, "acme", subject(1))
    assert (receipt["status"], receipt["stage"], receipt["samples"]) == ("completed", "approximate", 10)
    [model] = receipt["models"]
    assert model["model"] == "m" and model["guarantee"] == "approximate"
    [job] = model["jobs"]
    assert job["approximate_version"]["number"] == 1 and job["exact_version"] is None
    assert job["samples"] == 10 and job["status"] == "completed"
    # version 0 trained on the subject: withdrawn, effective after the 24 h grace period
    [v0] = model["versions_withdrawn"]
    assert (v0["number"], v0["successor_number"], v0["reason"], v0["in_force"]) == (0, 1, "erasure", False)
    assert model["versions_not_withdrawn"] == []
    # no purge sweep ran: nothing deleted is claimed, and the raw data is the owner's to delete
    assert receipt["blobs_deleted"] == [] and receipt["purge"] is None
    [data] = receipt["data"]
    expected_ids = list(
        db_session.scalars(
            select(Sample.sample_id).where(Sample.subject_id == subject(1)).order_by(Sample.position)
        )
    )
    assert data["kind"] == "built-in" and data["owner_duty"] and not data["raw_data_deleted"]
    assert data["sample_ids"] == expected_ids and data["tombstoned"] == 10
    assert "No stored blob holding the data has been deleted yet" in receipt["statement"]
    kinds = [e["kind"] for e in receipt["audit"]["events"]]
    assert kinds[0] == "request.received" and "request.completed" in kinds
    chain = verify_chain(db_session)
    assert chain["ok"] and receipt["audit"]["chain_head"] == {"seq": chain["checked"], "hash": chain["head"]}
    assert all(e["seq"] <= chain["checked"] for e in receipt["audit"]["events"])

    # A changed byte anywhere fails: a sample of positions, and a meaningful edit.
    step = max(1, len(document) // 200)
    for at in range(0, len(document), step):
        with pytest.raises(receipts.ReceiptError):
            receipts.verify(flipped(document, at), public)
    upgraded = document.replace(b'"stage":"approximate"', b'"stage":"exact"')
    with pytest.raises(receipts.ReceiptError, match="bad signature"):
        receipts.verify(upgraded, public)
    with pytest.raises(receipts.ReceiptError, match="signed by key"):
        receipts.verify(document, receipts.generate_private_key().public_key())

    # The CLI, offline: the key as PEM, as GET /receipt-key's JSON, as the base64 text.
    path = tmp_path / "receipt.json"
    path.write_bytes(document)
    pem = tmp_path / "receipt-key.pem"
    pem.write_text(served["pem"])
    as_json = tmp_path / "receipt-key.json"
    as_json.write_text(json.dumps(served))
    for key in (str(pem), str(as_json), served["public_key"]):
        ok = lethe_main("receipt", "verify", str(path), "--key", key)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("valid") and "stage approximate" in ok.stdout

    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(document.replace(subject(1).encode(), subject(2).encode()))
    bad = lethe_main("receipt", "verify", str(tampered), "--key", str(pem))
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad signature"), bad.stderr
    one_byte = tmp_path / "one-byte.json"
    one_byte.write_bytes(flipped(document, len(document) // 2))
    bad = lethe_main("receipt", "verify", str(one_byte), "--key", str(pem))
    assert bad.returncode == 2 and bad.stderr.startswith("error:"), bad.stderr
    missing = lethe_main("receipt", "verify", str(tmp_path / "nowhere.json"), "--key", str(pem))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    no_key = lethe_main("receipt", "verify", str(path))
    assert no_key.returncode == 2 and "--key" in no_key.stderr
    garbage = lethe_main("receipt", "verify", str(path), "--key", "not a key")
    assert garbage.returncode == 2 and garbage.stderr.startswith("error:")

    # A re-indented copy: refused byte for byte, accepted when asked for its content only.
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(document), indent=2, ensure_ascii=False) + "\n")
    strict = lethe_main("receipt", "verify", str(pretty), "--key", str(pem))
    assert strict.returncode == 2 and "byte for byte" in strict.stderr
    lenient = lethe_main("receipt", "verify", str(pretty), "--key", str(pem), "--allow-reformatted")
    assert lenient.returncode == 0, lenient.stderr


async def test_the_receipt_grows_to_exact_after_a_compaction(client, api_keys, db_session, partial_model) -> None:
    store = partial_model
    rid = file_now(subject(1), "m")
    assert work(store) == 1
    public = receipts.load_public_key((await served_key(client))["public_key"])
    before = receipts.verify(await fetch_receipt(client, api_keys["requester"], rid), public)
    assert before["stage"] == "approximate"

    run = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    assert train_claimed(run.id, store)

    after = receipts.verify(await fetch_receipt(client, api_keys["requester"], rid), public)
    assert after["stage"] == "exact" and after["status"] == "completed"
    [model] = after["models"]
    assert model["guarantee"] == "exact"
    [job] = model["jobs"]
    assert job["approximate_version"]["number"] == 1
    assert job["exact_version"]["number"] == 2 and job["exact_version"]["method"] == "compact"
    assert job["exact_at"] is not None
    # every older version held the subject (v0) or its approximate residue (v1)
    withdrawn = {v["number"]: v for v in model["versions_withdrawn"]}
    assert sorted(withdrawn) == [0, 1] and withdrawn[1]["reason"] == "compaction"
    assert all(v["successor_number"] in (1, 2) for v in withdrawn.values())
    assert after["blobs_deleted"] == [] and after["purge"] is None  # no sweep ran yet
    # A purge sweep deletes the updates of the steps its job subtracted (at once) and,
    # withdrawals being in force, the replaced lineage: the receipt lists each blob.
    from api.purge.service import sweep
    from api.registry.models import VersionWithdrawal

    db_session.execute(VersionWithdrawal.__table__.update().values(effective_at=utcnow()))
    db_session.commit()
    assert sweep(session_factory=get_sessionmaker()) > 0
    purged = receipts.verify(await fetch_receipt(client, api_keys["requester"], rid), public)
    deleted = {b["key"] for b in purged["blobs_deleted"]}
    assert any("/updates/" in k for k in deleted) and "runs/celery-small/run.json" in deleted
    assert all(b["sha256"] and b["bytes"] > 0 for b in purged["blobs_deleted"])
    # nothing of the request is left for the purge (a built-in dataset: its owner's data)
    assert purged["stage"] == "purged" and "The purge deleted" in purged["statement"]
    assert purged["purge"]["complete"] and purged["purge"]["remaining"] == []
    assert "never trained on the samples" in after["statement"]
    assert len(after["audit"]["events"]) >= len(before["audit"]["events"])
    assert after["audit"]["chain_head"]["seq"] > before["audit"]["chain_head"]["seq"]
    assert datetime.fromisoformat(after["issued_at"]) > datetime.fromisoformat(before["issued_at"])


async def test_who_gets_a_receipt_and_of_which_stage(client, api_keys, partial_model) -> None:
    rid = file_now(subject(1), "m")  # queued: no worker ran
    queued = receipts.verify(
        await fetch_receipt(client, api_keys["requester"], rid),
        receipts.load_public_key((await served_key(client))["public_key"]),
    )
    assert (queued["status"], queued["stage"]) == ("queued", "received")
    assert queued["models"][0]["guarantee"] == "none" and queued["models"][0]["versions_withdrawn"] == []
    assert queued["data"][0]["tombstoned"] == 0 and queued["samples"] == 10
    # an admin of the tenant reads it too
    await fetch_receipt(client, api_keys["admin"], rid)

    for key, want in (("other_tenant", 404), ("registry", 403)):
        resp = await client.get(f"/requests/{rid}/receipt", headers=bearer(api_keys[key]))
        assert resp.status_code == want, resp.text
        assert isinstance(resp.json()["detail"], str)
    assert rid in (await client.get(f"/requests/{rid}/receipt", headers=bearer(api_keys["other_tenant"]))).json()["detail"]
    unknown = await client.get("/requests/no-such-request/receipt", headers=bearer(api_keys["requester"]))
    assert unknown.status_code == 404 and "no-such-request" in unknown.json()["detail"]
    assert (await client.get(f"/requests/{rid}/receipt")).status_code == 401

    cancel = await client.post(f"/admin/requests/{rid}/cancel", headers=bearer(api_keys["admin"]))
    assert cancel.status_code == 200, cancel.text
    cancelled = json.loads(await fetch_receipt(client, api_keys["requester"], rid))["receipt"]
    assert (cancelled["status"], cancelled["stage"]) == ("cancelled", "received")
    assert "cancelled" in cancelled["statement"] and "no model was changed" in cancelled["statement"]
    assert cancelled["models"][0]["jobs"][0]["status"] == "cancelled"


async def test_an_erasure_applied_again_is_not_claimed_answered(client, api_keys, db_session, partial_model) -> None:
    """A compaction's new lineage trained on the samples (they were erased while it ran): the
    job that applies the erasure again is queued, and until it is done nothing answers it."""
    rid = file_now(subject(1), "m")
    assert work(partial_model) == 1
    job = db_session.scalar(select(RequestJob).where(RequestJob.request_id == rid))
    db_session.add(
        RequestJob(
            request_id=rid, model_id=job.model_id, method=job.method, status="queued",
            sample_ids=list(job.sample_ids), reapplies_job_id=job.id, details={},
        )
    )
    db_session.commit()
    receipt = json.loads(await fetch_receipt(client, api_keys["requester"], rid))["receipt"]
    assert (receipt["status"], receipt["stage"]) == ("completed", "received")
    assert receipt["models"][0]["guarantee"] == "none"
    assert [j["reapplies_job_id"] for j in receipt["models"][0]["jobs"]] == [None, job.id]
    assert "applied to it again" in receipt["statement"]


async def test_the_signing_key_survives_a_restart(client, api_keys, partial_model, key_file, monkeypatch) -> None:
    import httpx

    rid = file_now(subject(1), "m")
    document = await fetch_receipt(client, api_keys["requester"], rid)
    first = await served_key(client)
    assert key_file.read_bytes().startswith(b"-----BEGIN")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    get_settings.cache_clear()  # a new process: settings read again, a new app
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lethe.test") as again:
        second = await served_key(again)
        assert second == first
        receipts.verify(document, receipts.load_public_key(second["pem"]))  # issued before the restart
        assert (await again.get(f"/requests/{rid}/receipt", headers=bearer(api_keys["requester"]))).status_code == 200

    # The operator's key wins over the file (every replica shares it), as PEM or raw base64.
    operator = receipts.generate_private_key()
    expected = receipts.key_id(operator.public_key())
    raw = operator.private_bytes_raw()
    for given in (receipts.private_key_pem(operator).decode(), base64.b64encode(raw).decode()):
        monkeypatch.setenv("LETHE_RECEIPT_SIGNING_KEY", given)
        get_settings.cache_clear()
        assert (await served_key(client))["key_id"] == expected
        receipts.verify(await fetch_receipt(client, api_keys["requester"], rid), operator.public_key())

    # A key the service cannot use is a 503 that names the setting, not its value.
    monkeypatch.setenv("LETHE_RECEIPT_SIGNING_KEY", "not-a-key-at-all")
    get_settings.cache_clear()
    for path in ("/receipt-key", f"/requests/{rid}/receipt"):
        resp = await client.get(path, headers=bearer(api_keys["requester"]))
        assert resp.status_code == 503 and "LETHE_RECEIPT_SIGNING_KEY" in resp.json()["detail"]
        assert "not-a-key-at-all" not in resp.text

    # Without the setting, the file's key is back; a deleted file means a new key.
    monkeypatch.delenv("LETHE_RECEIPT_SIGNING_KEY")
    get_settings.cache_clear()
    assert (await served_key(client))["key_id"] == first["key_id"]
    key_file.unlink()
    assert (await served_key(client))["key_id"] != first["key_id"]


def test_every_single_byte_change_of_a_small_receipt_fails() -> None:
    """Exhaustive on a document with the awkward parts: escapes, a float at full
    precision, non-ASCII text, the signature's base64 padding."""
    key = receipts.generate_private_key()
    document = receipts.issue(
        {"s": "é\u001f\"\\", "f": 0.30000000000000004, "n": [None, True, -1, 10**20], "e": {}}, key
    )
    public = key.public_key()
    assert receipts.verify(document, public)["f"] == 0.30000000000000004
    assert receipts.verify(document + b"\n", public)  # one trailing newline is allowed
    for at in range(len(document)):
        for value in {0x00, 0x20, 0x30, 0x41, 0x46, 0x61, 0x66, 0x7F, 0xFF, document[at] ^ 0x01, document[at] ^ 0x20}:
            changed = document[:at] + bytes([value]) + document[at + 1 :]
            if changed == document:
                continue
            with pytest.raises(receipts.ReceiptError):
                receipts.verify(changed, public)
    with pytest.raises(receipts.ReceiptError, match="repeats the key"):
        receipts.verify(document.replace(b'{"receipt":{', b'{"receipt":{"e":{},', 1), public)


class StopsAfter:
    """The model's real store, except that once ``deletes`` deletions went through every
    further one fails as an unreachable store does: a purge sweep interrupted half-way."""

    def __init__(self, store: Any, deletes: int) -> None:
        self._store = store
        self.left = deletes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete(self, key: str) -> None:
        from unlearning_core.errors import BlobStoreUnavailableError

        if self.left <= 0:
            raise BlobStoreUnavailableError(f"injected: the store went away before {key}")
        self.left -= 1
        self._store.delete(key)


async def test_a_receipt_mid_purge_shows_what_went_and_is_purged_once_the_sweep_is_done(
    client, api_keys, db_session, partial_model, tmp_path, lethe_main
) -> None:
    from api.purge.deletion import RetryPolicy
    from api.purge.models import PurgedBlob
    from api.purge.service import sweep
    from api.registry import service as registry
    from api.registry.models import VersionWithdrawal

    store = partial_model
    rid = file_now(subject(1), "m")
    assert work(store) == 1
    run = compaction.request_compaction(
        db=db_session, model=db_session.scalar(select(Model).where(Model.name == "m")),
        trigger=Trigger.MANUAL, actor="test",
    )
    db_session.commit()
    assert train_claimed(run.id, store)
    db_session.execute(VersionWithdrawal.__table__.update().values(effective_at=utcnow()))
    db_session.commit()
    served = await served_key(client)
    public = receipts.load_public_key(served["public_key"])

    def recorded() -> list[PurgedBlob]:
        db_session.expire_all()
        return list(db_session.scalars(select(PurgedBlob).order_by(PurgedBlob.deleted_at, PurgedBlob.id)))

    # A sweep that stops after five deletions: the receipt says exact, lists those five.
    assert sweep(
        session_factory=get_sessionmaker(), retry=RetryPolicy(attempts=1),
        store_of=lambda db, model: StopsAfter(registry.store_of(db=db, model=model), 5),
    ) == 5
    mid = receipts.verify(await fetch_receipt(client, api_keys["requester"], rid), public)
    so_far = recorded()
    assert len(so_far) == 5
    assert mid["stage"] == "exact"
    assert sorted(b["key"] for b in mid["blobs_deleted"]) == sorted(r.key for r in so_far)
    assert all(not store.exists(b["key"]) for b in mid["blobs_deleted"])
    assert mid["purge"]["complete"] is False and mid["purge"]["completed_at"] is None
    left = mid["purge"]["remaining"]
    assert left and not {x["key"] for x in left} & {r.key for r in so_far}
    assert {x["kind"] for x in left} >= {"replaced-lineage"}
    assert "purge.remaining" in mid["statement"]

    # The next sweep finishes: purged, every deletion listed, and it verifies offline.
    assert sweep(session_factory=get_sessionmaker()) > 0
    document = await fetch_receipt(client, api_keys["requester"], rid)
    done = receipts.verify(document, public)
    SignedReceipt.model_validate_json(document)
    assert done["stage"] == "purged" and done["status"] == "completed"
    assert done["purge"]["complete"] and done["purge"]["remaining"] == []
    everything = recorded()
    assert sorted(b["key"] for b in done["blobs_deleted"]) == sorted(r.key for r in everything)
    assert datetime.fromisoformat(done["purge"]["completed_at"]) == max(r.deleted_at for r in everything)
    assert "(purged)" in done["statement"] and "owner's duty" in done["statement"]
    [data] = done["data"]
    assert data["kind"] == "built-in" and data["owner_duty"] and not data["raw_data_deleted"]
    assert len(data["sample_ids"]) == 10
    path = tmp_path / "purged.json"
    path.write_bytes(document)
    pem = tmp_path / "receipt-key.pem"
    pem.write_text(served["pem"])
    ok = lethe_main("receipt", "verify", str(path), "--key", str(pem))
    assert ok.returncode == 0 and "stage purged" in ok.stdout, ok.stderr
