"""The blob-store interface every back end implements, and the rules they share.

Everything Lethe keeps outside the database (weights, per-batch updates, SISA checkpoints,
manifests) is a blob under a key. A blob is always written together with the sha256 of its
bytes and verified against it on every read, so a torn write, a bit flip or a hand-edited
file is reported as :class:`BlobIntegrityError` instead of silently loading wrong weights.

Key rules live here (not in each back end) so that a key accepted by the local store is
also accepted by S3 and vice versa: moving a deployment between back ends never strands a
blob under a name the other side refuses.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from unlearning_core.errors import BlobIntegrityError, BlobStoreError

#: Keys ending in this suffix (in any segment) are reserved: the local back end keeps each
#: blob's sha256 in ``<key>.sha256`` beside it. Reserving it on every back end keeps keys
#: portable between back ends.
SIDECAR_SUFFIX = ".sha256"

#: S3 caps object names at 1024 bytes; keys are ASCII, so characters == bytes.
MAX_KEY_LENGTH = 1024

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobRef:
    """Where a blob lives and what it must hash to: enough to find and verify it later.

    Callers store ``sha256`` next to the key (e.g. in a model-version row) and pass it back
    as ``expected_sha256`` so a blob replaced behind Lethe's back is refused even if the
    replacement came with a matching recorded hash.
    """

    key: str
    sha256: str  # lowercase hex
    size: int


def key_problem(key: object) -> str | None:
    """Say why ``key`` is not a valid blob key, or ``None`` if it is.

    Valid keys are relative posix paths over ``[A-Za-z0-9._/-]``: no empty, ``.`` or ``..``
    segment (so no leading or trailing ``/`` and no ``//``), no segment ending in
    ``.sha256``, at most 1024 characters. These keep keys safe as local paths (no escape
    from the root, no collision with sidecars or temp files) and as S3 object names.
    """
    if not isinstance(key, str):
        return f"must be a string, got {type(key).__name__}"
    if not key:
        return "must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if not _KEY_CHARS.fullmatch(key):
        return "may only contain A-Z a-z 0-9 . _ / -"
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    for segment in key.split("/"):
        if segment == "":
            return "must not contain an empty segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"must not contain a {segment!r} segment"
        if segment.endswith(SIDECAR_SUFFIX):
            return f"must not end a segment in {SIDECAR_SUFFIX!r} (reserved for checksums)"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if valid; raise :class:`BlobStoreError` naming it otherwise."""
    problem = key_problem(key)
    if problem is not None:
        raise BlobStoreError(f"invalid blob key {key!r}: {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """Check a ``list`` prefix: empty, or a string a valid key could start with.

    A prefix is a plain string prefix of keys (``"runs/1"`` matches ``"runs/10/x"``), as in
    S3, so it may end mid-segment or with ``/``; it may not start with ``/``, use characters
    outside the key alphabet, or contain a ``..`` segment.
    """
    if prefix == "":
        return prefix
    if (
        not isinstance(prefix, str)
        or not _KEY_CHARS.fullmatch(prefix)
        or prefix.startswith("/")
        or ".." in prefix.split("/")
    ):
        raise BlobStoreError(
            f"invalid blob key prefix {prefix!r}: must be a relative key prefix over "
            "A-Z a-z 0-9 . _ / - without a '..' segment"
        )
    return prefix


def normalize_sha256(value: str, *, key: str) -> str:
    """Lower-case and check a caller-supplied hex sha256, naming the key on a malformed one."""
    normalized = value.strip().lower() if isinstance(value, str) else ""
    if not _SHA256_HEX.fullmatch(normalized):
        raise BlobStoreError(
            f"expected_sha256 for blob {key!r} is not a 64-character hex sha256: {value!r}"
        )
    return normalized


class BlobStore(ABC):
    """A flat namespace of immutable-by-convention byte blobs, each carrying its sha256.

    Implementations must: validate keys with :func:`validate_key`; record the sha256 of the
    bytes at ``put``; verify on ``get`` / ``iter_chunks`` against that recorded hash and
    against ``expected_sha256`` when given; raise :class:`BlobNotFoundError` for a missing
    key, :class:`BlobIntegrityError` for a mismatch and :class:`BlobStoreError` for any
    other failure, each message naming the key and :attr:`url`.
    """

    #: Canonical location: an absolute local directory path, or ``s3://bucket/prefix``.
    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> BlobRef:
        """Store ``data`` under ``key`` (replacing any previous blob) with its sha256."""

    @abstractmethod
    def get(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        """Return the blob's bytes after verifying them against the recorded sha256.

        If ``expected_sha256`` is given the bytes must match it as well: the recorded hash
        only proves the blob is what *someone* wrote, the caller's hash proves it is what
        the caller meant.
        """

    @abstractmethod
    def stat(self, key: str) -> BlobRef:
        """Return the recorded sha256 and size without reading (or verifying) the bytes."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is not an error (erasure is retried)."""

    @abstractmethod
    def iter_chunks(
        self,
        key: str,
        chunk_size: int = 1 << 20,
        *,
        expected_sha256: str | None = None,
    ) -> Iterator[bytes]:
        """Stream the blob in chunks of at most ``chunk_size`` bytes, hashing as it goes.

        Meant for large weight downloads that should not sit in memory whole. The hash can
        only be checked after the last byte, so :class:`BlobIntegrityError` is raised at the
        end of iteration: a consumer must treat what it received as untrusted until the
        iterator is exhausted without error (e.g. write to a temp file, rename on success).
        """

    # -- conveniences shared by every back end -------------------------------------------

    def put_json(self, key: str, obj: Any) -> BlobRef:
        """Store ``obj`` as UTF-8 JSON with sorted keys.

        Sorted keys make the bytes (and so the sha256) a function of the content alone, so
        equal manifests written twice hash the same.
        """
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2) + "\n"
        return self.put(key, text.encode("utf-8"))

    def get_json(self, key: str, *, expected_sha256: str | None = None) -> Any:
        """Read and verify a blob, then parse it as UTF-8 JSON."""
        data = self.get(key, expected_sha256=expected_sha256)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BlobStoreError(
                f"blob {key!r} in {self.url} is not valid UTF-8 JSON: {exc}"
            ) from exc

    # -- helpers for implementations ------------------------------------------------------

    def _verify(self, key: str, actual: str, recorded: str | None, expected: str | None) -> None:
        """Raise :class:`BlobIntegrityError` unless ``actual`` matches both hashes."""
        if recorded is None:
            raise BlobIntegrityError(
                f"blob {key!r} in {self.url} has no recorded sha256; refusing to return "
                "unverifiable bytes"
            )
        if actual != recorded.strip().lower():
            raise BlobIntegrityError(
                f"blob {key!r} in {self.url} failed its integrity check: content sha256 "
                f"{actual} != recorded {recorded}"
            )
        if expected is not None and actual != expected:
            raise BlobIntegrityError(
                f"blob {key!r} in {self.url} is not the expected blob: content sha256 "
                f"{actual} != expected {expected}"
            )

    def _verified_chunks(
        self,
        key: str,
        chunks: Iterator[bytes],
        recorded: str | None,
        expected: str | None,
    ) -> Iterator[bytes]:
        """Pass ``chunks`` through while hashing them; verify once they are exhausted."""
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
            yield chunk
        self._verify(key, digest.hexdigest(), recorded, expected)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class ClosingChunks(Iterator[bytes]):
    """An iterator over verified chunks that releases its source even if never iterated.

    Back ends open the blob eagerly in ``iter_chunks`` so a missing key fails at the call,
    not at the first ``next()``. A plain generator that is never started does not run its
    ``finally`` when collected, so the open file / HTTP response would leak; this wrapper
    releases it on exhaustion, on :meth:`close`, or when garbage-collected.
    """

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> ClosingChunks:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the underlying file or connection; safe to call more than once."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> ClosingChunks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def check_chunk_size(chunk_size: int) -> int:
    """Reject non-positive chunk sizes early, rather than looping forever on ``read(0)``."""
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise BlobStoreError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size
