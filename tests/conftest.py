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
