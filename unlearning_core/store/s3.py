"""Blob store on an S3-compatible server (MinIO in production), through the ``minio`` client.

Each object carries the sha256 of its bytes as user metadata (``x-amz-meta-sha256``), set
in the same PUT that writes the bytes, so bytes and hash are replaced atomically by the
server. Reads take the recorded hash from the headers of the very GET response that
carries the bytes (not from a separate HEAD that could race an overwrite) and verify.

We do not rely on the ETag: it is an MD5 only for single-part uploads, and large weights
go up in multiple parts.

On a bucket with versioning (enabled, or suspended after having been enabled) a plain
DELETE only hides the key behind a delete marker: every earlier version stays readable by
version id. :meth:`S3BlobStore.delete` therefore removes every version and delete marker of
the key there, so a blob the purge deletes is gone, not just hidden.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error, ServerError
from minio.helpers import check_bucket_name
from urllib3.util import Retry, Timeout

from unlearning_core.errors import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobStoreError,
    BlobStoreUnavailableError,
)
from unlearning_core.store.base import (
    BlobRef,
    BlobStore,
    ClosingChunks,
    check_chunk_size,
    key_problem,
    normalize_sha256,
    validate_key,
    validate_prefix,
)
from unlearning_core.store.settings import S3Settings

SHA256_HEADER = "x-amz-meta-sha256"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject"}
#: Bucket versioning states in which a key may have earlier versions (``Suspended`` keeps
#: those written while it was enabled).
_VERSIONED = {"Enabled", "Suspended"}
#: How long an answer "not versioned" is trusted before asking again (versioning can be
#: switched on at any time; once on it can never be switched off, only suspended).
VERSIONING_RECHECK_S = 60.0

log = logging.getLogger("lethe.store.s3")
_BUCKET_EXISTS_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}

T = TypeVar("T")


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """Accept ``host:port`` or ``http(s)://host:port``; minio wants the bare host:port.

    A scheme in the endpoint wins over ``secure`` because it is the more explicit of the
    two (people paste URLs from a MinIO console).
    """
    endpoint = endpoint.strip()
    for scheme, is_secure in (("https://", True), ("http://", False)):
        if endpoint.lower().startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/"), is_secure
    return endpoint.rstrip("/"), secure


def make_http_client(settings: S3Settings) -> urllib3.PoolManager:
    """A urllib3 pool whose :class:`Retry` does our retrying (backoff, 5xx, connect errors).

    Same shape as minio's default client, but with the retry count and timeouts taken from
    settings: minio's default waits up to five minutes to connect, far too long for a
    health check or a test run against a server that is simply not up.
    """
    return urllib3.PoolManager(
        timeout=Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(
            total=settings.retries,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
        ),
    )


class S3BlobStore(BlobStore):
    """Blobs as objects ``<prefix>/<key>`` in one bucket, sha256 in object metadata.

    The bucket is checked (and created when ``settings.create_bucket``) lazily on first
    use, once, so that building a store (e.g. at app start-up or in ``open_store``) does no
    I/O and an unreachable server is reported by the first real operation, naming the
    endpoint. The minio client and its urllib3 pool are thread-safe, so one store may be
    shared by threads.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: S3Settings | None = None,
        *,
        client: Minio | None = None,
    ) -> None:
        """Address ``s3://bucket/prefix``; ``client`` overrides the one built from settings."""
        self.settings = settings if settings is not None else S3Settings()
        self.endpoint, secure = split_endpoint(self.settings.endpoint, self.settings.secure)
        prefix = prefix.strip("/")
        if prefix and key_problem(prefix) is not None:
            raise BlobStoreError(f"invalid S3 prefix {prefix!r}: {key_problem(prefix)}")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        try:
            self._client = client or Minio(
                self.endpoint,
                access_key=self.settings.access_key,
                secret_key=self.settings.secret_key.get_secret_value(),
                secure=secure,
                region=self.settings.region,
                http_client=make_http_client(self.settings),
            )
            # S3 bucket-name rules (3-63 lowercase chars, no IP addresses), as MinIO enforces.
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise BlobStoreError(
                f"invalid S3 location {self.url} at {self.endpoint}: {exc}"
            ) from exc
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        self._versioned = False
        self._versioning_checked_at: float | None = None

    @property
    def client(self) -> Minio:
        """The underlying minio client (for tooling and tests; bypasses verification)."""
        return self._client

    def object_name(self, key: str) -> str:
        """The S3 object name that holds ``key``."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- error mapping ---------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate minio / urllib3 failures into BlobStore errors naming key and endpoint."""
        what = f"blob {key!r} in {self.url}" if key is not None else self.url
        try:
            yield
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES and key is not None:
                raise BlobNotFoundError(f"no blob {key!r} in {self.url}") from None
            if exc.code == "NoSuchBucket":
                raise BlobStoreError(
                    f"cannot {action} {what}: bucket {self.bucket!r} does not exist at "
                    f"{self.endpoint}"
                ) from exc
            raise BlobStoreError(
                f"cannot {action} {what} at {self.endpoint}: {exc.code}: {exc.message}"
            ) from exc
        except ServerError as exc:
            if exc.status_code >= 500:
                raise BlobStoreUnavailableError(
                    f"cannot {action} {what}: S3 endpoint {self.endpoint} answered {exc.status_code}"
                ) from exc
            raise BlobStoreError(f"cannot {action} {what} at {self.endpoint}: {exc}") from exc
        except MinioException as exc:
            raise BlobStoreError(f"cannot {action} {what} at {self.endpoint}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise BlobStoreUnavailableError(
                f"cannot {action} {what}: S3 endpoint {self.endpoint} unreachable "
                f"after {self.settings.retries} retries: {reason}"
            ) from exc

    def _ensure_bucket(self, action: str, key: str | None) -> None:
        """Check the bucket exists (creating it if allowed) the first time it is needed.

        ``action`` and ``key`` only shape the error message of the operation that asked.
        """
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            with self._errors(action, key):
                if not self._client.bucket_exists(self.bucket):
                    if not self.settings.create_bucket:
                        raise BlobStoreError(
                            f"bucket {self.bucket!r} does not exist at {self.endpoint} and "
                            "LETHE_S3_CREATE_BUCKET is false"
                        )
                    try:
                        self._client.make_bucket(self.bucket, location=self.settings.region)
                    except S3Error as exc:  # another process created it meanwhile
                        if exc.code not in _BUCKET_EXISTS_CODES:
                            raise
            self._bucket_ready = True

    def _run(self, action: str, key: str | None, call: Callable[[], T]) -> T:
        self._ensure_bucket(action, key)
        with self._errors(action, key):
            return call()

    # -- operations ------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> BlobRef:
        """Upload ``data`` with its sha256 as ``x-amz-meta-sha256`` in the same request."""
        name = self.object_name(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
        payload = bytes(data)
        digest = hashlib.sha256(payload).hexdigest()
        self._run(
            "write",
            key,
            lambda: self._client.put_object(
                self.bucket,
                name,
                io.BytesIO(payload),
                len(payload),
                content_type="application/octet-stream",
                metadata={SHA256_HEADER: digest},
            ),
        )
        return BlobRef(key=key, sha256=digest, size=len(payload))

    def _open(self, key: str) -> urllib3.BaseHTTPResponse:
        name = self.object_name(key)
        return self._run("read", key, lambda: self._client.get_object(self.bucket, name))

    @staticmethod
    def _release(response: urllib3.BaseHTTPResponse) -> None:
        response.close()
        response.release_conn()

    def get(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        """Download and verify against the sha256 in the same response's headers."""
        expected = normalize_sha256(expected_sha256, key=key) if expected_sha256 else None
        response = self._open(key)
        try:
            with self._errors("read", key):
                data = response.read()
            recorded = response.headers.get(SHA256_HEADER)
        finally:
            self._release(response)
        self._verify(key, hashlib.sha256(data).hexdigest(), recorded, expected)
        return data

    def iter_chunks(
        self,
        key: str,
        chunk_size: int = 1 << 20,
        *,
        expected_sha256: str | None = None,
    ) -> Iterator[bytes]:
        """Stream the object; a missing key fails here, a hash mismatch after the last chunk."""
        check_chunk_size(chunk_size)
        expected = normalize_sha256(expected_sha256, key=key) if expected_sha256 else None
        response = self._open(key)
        recorded = response.headers.get(SHA256_HEADER)

        def read() -> Iterator[bytes]:
            with self._errors("read", key):
                yield from response.stream(chunk_size)

        return ClosingChunks(
            self._verified_chunks(key, read(), recorded, expected),
            lambda: self._release(response),
        )

    def stat(self, key: str) -> BlobRef:
        """Recorded sha256 and size from a HEAD request, without reading the bytes."""
        name = self.object_name(key)
        obj = self._run("stat", key, lambda: self._client.stat_object(self.bucket, name))
        recorded = obj.metadata.get(SHA256_HEADER) if obj.metadata is not None else None
        if not recorded:
            raise BlobIntegrityError(f"blob {key!r} in {self.url} has no recorded sha256")
        return BlobRef(key=key, sha256=recorded.strip().lower(), size=int(obj.size or 0))

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a HEAD request)."""
        name = self.object_name(key)
        try:
            self._run("stat", key, lambda: self._client.stat_object(self.bucket, name))
        except BlobNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under ``prefix`` (relative to the store's own prefix)."""
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""

        def collect() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=base + prefix, recursive=True)
            return [
                obj.object_name[len(base) :]
                for obj in objects
                if obj.object_name is not None and not obj.is_dir
            ]

        return sorted(self._run("list", None, collect))

    def delete(self, key: str) -> None:
        """Remove the object: on a versioned bucket every version and delete marker of the
        key, else one DELETE. Deleting a missing key succeeds
        either way, so this is idempotent."""
        name = self.object_name(key)
        if self.bucket_versioned():
            self._run("delete", key, lambda: self._remove_versions(name))
            return
        try:
            self._run("delete", key, lambda: self._client.remove_object(self.bucket, name))
        except BlobNotFoundError:
            pass

    def bucket_versioned(self) -> bool:
        """Whether the bucket keeps object versions (versioning enabled or suspended).

        Asked of the server (``GetBucketVersioning``) at most every
        :data:`VERSIONING_RECHECK_S` seconds while the answer is no, and never again once it
        is yes (versioning cannot be switched off). A server that refuses the question
        (``AccessDenied``: a policy without ``s3:GetBucketVersioning``) is taken as
        unversioned, with a warning: deletes then leave any earlier versions behind.
        """
        if self._versioned:
            return True
        checked = self._versioning_checked_at
        if checked is not None and time.monotonic() - checked < VERSIONING_RECHECK_S:
            return False

        def ask() -> bool:
            try:
                config = self._client.get_bucket_versioning(self.bucket)
            except S3Error as exc:
                if exc.code != "AccessDenied":
                    raise
                log.warning(
                    "cannot read the versioning of bucket %s at %s (AccessDenied): deletes "
                    "remove only the current version; grant s3:GetBucketVersioning",
                    self.bucket, self.endpoint,
                )
                return False
            return config.status in _VERSIONED

        versioned = self._run("read the versioning of", None, ask)
        self._versioned = versioned
        self._versioning_checked_at = time.monotonic()
        return versioned

    def _remove_versions(self, name: str) -> int:
        """List the versions of exactly ``name`` (the listing is by prefix) and remove each
        by its version id; again until none is left, so a version written meanwhile goes
        too (at most a few rounds: a key the purge deletes is no longer written)."""
        removed = 0
        for _round in range(5):
            versions = [
                obj.version_id
                for obj in self._client.list_objects(
                    self.bucket, prefix=name, recursive=True, include_version=True
                )
                if obj.object_name == name
            ]
            if not versions:
                return removed
            for version_id in versions:
                self._client.remove_object(self.bucket, name, version_id=version_id)
            removed += len(versions)
        raise BlobStoreError(
            f"cannot delete blob {name!r} in {self.url}: new versions keep appearing"
        )
