"""Shared pytest fixtures. Tests talk to real servers (Postgres, Redis, S3), never mocks.

`make test` runs scripts/ensure-services.sh first, which starts whatever is not running.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from unlearning_core.store import LocalBlobStore, S3BlobStore, S3Settings
from unlearning_core.store.s3 import split_endpoint

# ---------------------------------------------------------------------------------------
# Blob store
# ---------------------------------------------------------------------------------------

#: Tests default to the moto server ensure-services.sh starts, not the dev MinIO port.
TEST_S3_ENDPOINT = "127.0.0.1:9900"


def _answers(endpoint: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def s3_settings() -> S3Settings:
    """S3 settings for the test server; FAILS (not skips) when nothing answers.

    A silently skipped S3 suite would let S3 regressions through; a missing server is a
    broken test setup and must be visible.
    """
    endpoint = os.environ.get("LETHE_S3_ENDPOINT", TEST_S3_ENDPOINT)
    settings = S3Settings(endpoint=endpoint, retries=1, connect_timeout_s=2.0)
    host_port, _secure = split_endpoint(settings.endpoint, settings.secure)
    if not _answers(host_port):
        pytest.fail(
            f"no S3 server answers at {host_port} (LETHE_S3_ENDPOINT). Run the tests with "
            "`make test`, or start the servers first with `scripts/ensure-services.sh "
            ".venv/bin` (starts moto on 127.0.0.1:${LETHE_S3_PORT:-9900}).",
            pytrace=False,
        )
    return settings


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    """A fresh local blob store in the test's temporary directory."""
    return LocalBlobStore(tmp_path / "blobs")


def _drop_bucket(store: S3BlobStore) -> None:
    """Empty and remove the store's bucket so a long test session does not pile them up."""
    client = store.client
    if not client.bucket_exists(store.bucket):
        return
    for obj in client.list_objects(store.bucket, recursive=True):
        if obj.object_name is not None:
            client.remove_object(store.bucket, obj.object_name)
    client.remove_bucket(store.bucket)


@pytest.fixture
def s3_store(s3_settings: S3Settings) -> Iterator[S3BlobStore]:
    """An S3 blob store on a fresh, uniquely named bucket, removed after the test."""
    store = S3BlobStore(f"lethe-test-{uuid.uuid4().hex[:20]}", "blobs", s3_settings)
    yield store
    _drop_bucket(store)


# ---------------------------------------------------------------------------------------
# Service: a real PostgreSQL database per test session, emptied before each test
# ---------------------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("LETHE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, migrated to head, dropped at the end."""
    import psycopg

    from api.database.migrate import upgrade

    name = f"lethe_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); run `make test`", pytrace=False)
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    upgrade(url)
    yield url
    from api.database.core import reset_caches

    reset_caches()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def service_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Settings for one test: the session database (emptied), a private blob folder."""
    from sqlalchemy import text

    import api.database.all_models  # noqa: F401
    from api.database.core import Base, get_engine, reset_caches

    monkeypatch.setenv("LETHE_DATABASE_URL", pg_url)
    monkeypatch.setenv("LETHE_BLOB_STORE", str(tmp_path / "blobs"))
    # server paths may be registered from the test's own folder only (api/datasets/config.py)
    monkeypatch.setenv("LETHE_DATASET_ROOTS", str(tmp_path))
    monkeypatch.setenv("LETHE_EMBEDDED_WORKER", "false")
    monkeypatch.setenv("LETHE_SEED_DEMO", "false")
    monkeypatch.setenv("LETHE_DEVICE", "cpu")
    reset_caches()
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with get_engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield pg_url
    reset_caches()


@pytest.fixture
def db_session(service_env: str):
    from api.database.core import get_sessionmaker

    with get_sessionmaker()() as session:
        yield session


@pytest.fixture
def api_keys(db_session) -> dict[str, str]:
    """One key per scope (tenant "acme"), plus a requester of another tenant."""
    from api.auth.service import create_key

    keys = {
        scope: create_key(db_session, name=f"test-{scope}", scopes=[scope], tenant="acme")[1]
        for scope in ("requester", "registry", "admin")
    }
    keys["other_tenant"] = create_key(db_session, name="other", scopes=["requester"], tenant="globex")[1]
    db_session.commit()
    return keys


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(service_env: str):
    import httpx

    from api.main import create_app

    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lethe.test") as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def lethe_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``lethe_main(*args)``: the ``lethe`` ML commands through the console script's ``main`` in
    this process, as ``subprocess.CompletedProcess`` (exit status, stdout, stderr): the same
    status and output as a new interpreter, without its start-up for every case, and with
    whatever the test registered (a toy method or metric) in the registries."""
    import subprocess
    import sys

    from unlearning_core.cli.main import main

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "argv", ["lethe", *args])
        monkeypatch.setenv("COLUMNS", "320")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr()
        code = exited.value.code
        return subprocess.CompletedProcess(list(args), code if isinstance(code, int) else 1, out.out, out.err)

    return run


def lethe_with_plugin(plugin: str, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    """``lethe ARGS`` in a new interpreter that first ran ``tests.<plugin>.register()``, as a
    user's plugin module would register a method or metric before the CLI runs."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    boot = (f"from tests import {plugin}; {plugin}.register(); "
            "from unlearning_core.cli.main import main; main()")
    env = {**os.environ, "COLUMNS": "320", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", boot, *args], capture_output=True, text=True,
                          timeout=300, cwd=root, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def recorded_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded digits runs of :data:`tests.service_fixtures.RUNS`, in a local folder
    (tests copy them into their own store)."""
    import torch

    from tests.service_fixtures import RUNS
    from unlearning_core.data import load_dataset
    from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
    from unlearning_core.runs.train import train_run

    root = tmp_path_factory.mktemp("celery-runs")
    store = LocalBlobStore(root)
    data = load_dataset("digits", subject_size=10)
    for i, (run_id, (arch, record, _method, epochs, batch)) in enumerate(RUNS.items()):
        train_run(
            store,
            run_id=run_id,
            dataset=data,
            dataset_spec=DatasetSpec(spec="digits", subject_size=10),
            model_name=arch,
            training=TrainingSpec(
                epochs=epochs, batch_size=batch, lr=0.02, momentum=0.9, weight_decay=0.0, seed=i
            ),
            recording=RecordingSpec(
                mode=record,
                prune_first=0.95 if record == "partial" else 0.0,
                prune_last=0.3 if record == "partial" else 0.0,
            ),
            device=torch.device("cpu"),
        )
    return root
