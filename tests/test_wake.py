"""Waking workers after commit (api/wake.py), against the real Redis broker.

A message leaves only when the transaction that queued the work commits: never for a
rolled-back one (a worker would find no row), and never in embedded mode (no broker). The
message is a Celery task by name with integer arguments, on the queue its kind belongs to.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from api import wake

REDIS_URL = os.environ.get("LETHE_TEST_REDIS_WAKE", "redis://127.0.0.1:6379/13")


@pytest.fixture
def broker(service_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    import redis

    from api.config import get_settings

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); run `make test`", pytrace=False)
    monkeypatch.setenv("LETHE_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("LETHE_WORK_QUEUE", "gpu")
    get_settings.cache_clear()
    yield client
    client.flushdb()
    get_settings.cache_clear()


def messages(client: object, queue: str) -> list[tuple[str, list[int]]]:
    """(task name, args) of the messages waiting on ``queue``, oldest first."""
    out = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # type: ignore[attr-defined]
        body = json.loads(raw)
        args = json.loads(base64.b64decode(body["body"]))[0]
        out.append((body["headers"]["task"], args))
    return out


def test_sent_after_commit_never_after_rollback(broker: object, db_session: Session) -> None:
    db_session.execute(text("SELECT 1"))  # a transaction that queued work
    wake.after_commit(db_session, wake.PROCESS_JOB, [7, 8])
    db_session.rollback()
    db_session.commit()  # a later commit of the same session sends nothing either
    assert messages(broker, "gpu") == []

    db_session.execute(text("SELECT 1"))
    wake.after_commit(db_session, wake.PROCESS_JOB, [7, 8])
    assert messages(broker, "gpu") == []  # not before the commit
    db_session.commit()
    assert messages(broker, "gpu") == [("lethe.process_job", [7]), ("lethe.process_job", [8])]
    db_session.commit()  # once
    assert len(messages(broker, "gpu")) == 2


def test_queues_and_embedded_mode(
    broker: object, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.config import get_settings

    assert wake.send(wake.DISPATCH, [()]) == 1  # not device work: the cpu queue
    wake.send_one(wake.TRAIN_SISA_SHARD, 3, 1)
    assert messages(broker, "cpu") == [("lethe.dispatch", [])]
    assert messages(broker, "gpu") == [("lethe.train_sisa_shard", [3, 1])]

    monkeypatch.delenv("LETHE_BROKER_URL")
    get_settings.cache_clear()
    wake.after_commit(db_session, wake.TRAIN_RUN, [1])
    db_session.commit()
    assert wake.send(wake.TRAIN_RUN, [(1,)]) == 0
    with pytest.raises(RuntimeError, match="no broker"):
        wake.send_one(wake.TRAIN_SISA_SHARD, 3, 1)
    assert len(messages(broker, "gpu")) == 1
