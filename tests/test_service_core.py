"""Service foundations: migrations, API keys, the audit chain, health, the CLI around them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from api.audit.service import append, verify
from api.auth.service import authenticate, create_key, hash_key
from api.database.migrate import downgrade, upgrade
from tests.conftest import bearer

LETHE = str(Path(sys.executable).with_name("lethe"))


def test_migrations_upgrade_and_downgrade_cleanly(tmp_path: Path, pg_url: str) -> None:
    sqlite = f"sqlite:///{tmp_path / 'm.db'}"
    for url in (sqlite,):
        upgrade(url)
        tables = set(inspect(create_engine(url)).get_table_names())
        assert {"erasure_requests", "model_versions", "audit_events", "api_keys", "samples"} <= tables
        downgrade(url)
        assert set(inspect(create_engine(url)).get_table_names()) <= {"alembic_version"}
        upgrade(url)
    # PostgreSQL: the session database is at head; a second upgrade is a no-op.
    upgrade(pg_url)
    with create_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def test_migrations_round_trip_on_postgres(pg_url: str) -> None:
    import uuid

    import psycopg

    from tests.conftest import PG_ADMIN_URL

    name = f"lethe_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        downgrade(url)
        engine = create_engine(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        engine.dispose()
        upgrade(url)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_api_keys_are_stored_hashed_and_scoped(db_session) -> None:
    row, key = create_key(db_session, name="k", scopes=["requester", "registry"], tenant="acme")
    db_session.commit()
    stored = db_session.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert key not in json.dumps({k: str(v) for k, v in stored.items()})
    assert stored["key_hash"] == hash_key(key) and stored["prefix"] == key[:12]
    assert authenticate(db_session, key).id == row.id
    assert authenticate(db_session, key + "x") is None
    with pytest.raises(ValueError, match="scopes"):
        create_key(db_session, name="bad", scopes=["root"])


def test_audit_chain_detects_edits_and_deletions(db_session) -> None:
    for i in range(5):
        append(db_session, "test.event", request_id=f"r{i}", payload={"i": i, "metrics": {"forget_acc": 0.0}})
    db_session.commit()
    assert verify(db_session) == {"ok": True, "checked": 5, "first_broken": None, "head": verify(db_session)["head"]}
    db_session.execute(text("UPDATE audit_events SET payload = '{\"i\": 99}' WHERE seq = 3"))
    db_session.commit()
    result = verify(db_session)
    assert not result["ok"] and result["first_broken"]["seq"] == 3 and "edited" in result["first_broken"]["reason"]
    db_session.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    db_session.commit()
    result = verify(db_session)
    assert result["first_broken"]["seq"] == 4 and "missing" in result["first_broken"]["reason"]


@pytest.mark.anyio
async def test_health_and_readiness(client, api_keys) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "blob_store": "ok"}
    verify_resp = await client.get("/admin/audit/verify", headers=bearer(api_keys["admin"]))
    assert verify_resp.status_code == 200 and verify_resp.json()["ok"] is True
    assert (await client.get("/admin/audit/verify", headers=bearer(api_keys["requester"]))).status_code == 403
    assert (await client.get("/admin/audit/verify")).status_code == 401
    bad = await client.get("/admin/audit/verify", headers=bearer("lethe_not-a-real-key-0000000"))
    assert bad.status_code == 401 and "invalid" in bad.json()["detail"]


def test_cli_creates_keys_and_verifies_the_chain(tmp_path: Path) -> None:
    env = {**os.environ, "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    out = subprocess.run([LETHE, "keys", "create", "--name", "ops", "--scope", "admin", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout.strip().splitlines()[-1])
    assert created["key"].startswith("lethe_") and created["scopes"] == ["admin"]
    bad = subprocess.run([LETHE, "keys", "create", "--name", "x", "--scope", "root"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "scopes" in bad.stderr
    ok = subprocess.run([LETHE, "audit", "verify", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
