"""Blob store in a local directory: the embedded default, needing no server.

Layout: the blob for key ``a/b.bin`` is the file ``<root>/a/b.bin``; its sha256 is in the
sidecar ``<root>/a/b.bin.sha256`` in ``sha256sum`` format (``<hex>  b.bin``), so an
operator can check a store by hand with ``sha256sum -c``. Keys never end a segment in
``.sha256`` and never contain ``~`` (see :func:`~unlearning_core.store.base.key_problem`),
so sidecars and temp files (``.<name>.<random>.tmp~``) can never collide with a key.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from unlearning_core.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError
from unlearning_core.store.base import (
    SIDECAR_SUFFIX,
    BlobRef,
    BlobStore,
    ClosingChunks,
    check_chunk_size,
    key_problem,
    normalize_sha256,
    validate_key,
    validate_prefix,
)

_LOCK_STRIPES = 64
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# "This path is not a stored blob": the file is gone, or a key's parent is itself a blob
# (a/b asked for while a is a file), or the key names a directory of other keys.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _write_all(fileobj: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte of ``data``. A seam of its own so tests can simulate a full disk."""
    fileobj.write(data)


def _unlink_quietly(path: str) -> None:
    """Remove a temp file if it is still there; cleanup must not mask the real error."""
    try:
        os.unlink(path)
    except OSError:
        pass


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root``, each with a ``.sha256`` sidecar.

    **Write order and why a crash is safe.** ``put`` first writes both the sidecar and the
    blob in full to temp files in the destination directory, then renames them over their
    final names with ``os.replace`` (atomic on POSIX): sidecar first, blob last. So every
    file under its final name is complete, old or new version, never a torn mix; and a
    failure while writing (a full disk, most likely) happens before either rename, leaving
    the previous version untouched. A crash between the two renames leaves one of:

    - new key: a sidecar without a blob. The key does not exist (``exists`` / ``list`` /
      ``get`` look at the blob file), a retried ``put`` overwrites the orphan sidecar;
    - overwritten key: the old blob with the new sidecar. Its content hash is not the
      recorded one, so ``get`` raises :class:`BlobIntegrityError`; nothing reads as valid.

    In general a read succeeds only if the blob's bytes hash to the recorded value, and
    the recorded value is the hash of bytes some ``put`` wrote in full, so a crash can make
    a blob unreadable but never make wrong bytes read as valid. Publishing the blob last
    also makes its appearance the commit point of ``put``. With ``durable=True`` (default)
    both files and the directory are fsynced, so an acknowledged ``put`` survives power
    loss too; ``durable=False`` trades that for speed (many small per-batch updates) while
    keeping the no-wrong-bytes guarantee, which rests on hashing, not on fsync.

    **Concurrency.** Puts of different keys never share a temp file (``mkstemp``) and
    directory creation tolerates races, so they are safe from many threads. Operations on
    the same key within one process are serialised by a striped lock, and readers open the
    blob and read its sidecar under that lock, so a reader in this process sees a
    consistent pair even while another thread overwrites the key. Across processes an
    overwrite racing a read can make that read fail its check (never succeed wrongly);
    Lethe writes each key once, so this is not expected in practice.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        """Open (creating if missing) the store rooted at ``root``."""
        path = Path(root).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobStoreError(
                f"cannot create blob store directory {str(path)!r}: {exc}"
            ) from exc
        if not path.is_dir():
            raise BlobStoreError(f"blob store location {str(path)!r} is not a directory")
        self.root: Path = path.resolve()
        self.url: str = str(self.root)
        self.durable = durable
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    # -- paths and locks -------------------------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[hash(key) % _LOCK_STRIPES]

    def _blob_path(self, key: str) -> Path:
        return self.root / validate_key(key)

    @staticmethod
    def _sidecar_path(blob: Path) -> Path:
        return blob.with_name(blob.name + SIDECAR_SUFFIX)

    def _read_recorded(self, blob: Path) -> str | None:
        """The hex sha256 in the blob's sidecar, or ``None`` if it is missing or empty."""
        try:
            text = self._sidecar_path(blob).read_text(encoding="ascii", errors="replace")
        except _MISSING:
            return None
        except OSError as exc:
            raise BlobStoreError(f"cannot read checksum of {blob} in {self.url}: {exc}") from exc
        fields = text.split()
        return fields[0].lower() if fields else None

    # -- writing ---------------------------------------------------------------------------

    def _write_temp(self, path: Path, data: bytes | memoryview) -> str:
        """Write ``data`` in full to a new temp file beside ``path``; return its name.

        The temp file is removed on any failure, so a full disk leaves no debris behind.
        """
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp~")
        try:
            with os.fdopen(fd, "wb") as fileobj:
                _write_all(fileobj, data)
                if self.durable:
                    fileobj.flush()
                    os.fsync(fileobj.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _fsync_dir(self, directory: Path) -> None:
        """Persist the renames in ``directory`` (best effort where unsupported)."""
        try:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _write_sidecar_temp(self, blob: Path, sidecar: Path, digest: str) -> str:
        """Create the blob's directory and the sidecar's temp file, retrying a lost race.

        ``delete`` of another key may remove the (then empty) directory between our
        ``mkdir`` and ``mkstemp``; once our temp file is in it, it is no longer empty and
        cannot vanish, so a few retries always suffice.
        """
        content = f"{digest}  {blob.name}\n".encode("ascii")
        for attempt in range(5):
            try:
                blob.parent.mkdir(parents=True, exist_ok=True)
                return self._write_temp(sidecar, content)
            except FileNotFoundError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> BlobRef:
        """Store ``data`` under ``key`` with its sha256: write both, then rename (see class)."""
        blob = self._blob_path(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
        view = memoryview(data).cast("B")
        digest = hashlib.sha256(view).hexdigest()
        sidecar = self._sidecar_path(blob)
        try:
            with self._lock(key):
                temps: list[str] = []
                try:
                    temps.append(self._write_sidecar_temp(blob, sidecar, digest))
                    temps.append(self._write_temp(blob, view))
                    # Commit: nothing above touched a final name. Sidecar first, blob last.
                    for tmp, final in zip(list(temps), (sidecar, blob)):
                        os.replace(tmp, final)
                        temps.remove(tmp)
                finally:
                    for tmp in temps:
                        _unlink_quietly(tmp)
                if self.durable:
                    self._fsync_dir(blob.parent)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise BlobStoreError(
                    f"disk full: cannot write blob {key!r} ({view.nbytes} bytes) to "
                    f"{self.url}: {exc.strerror or exc}; free space or move the store"
                ) from exc
            raise BlobStoreError(f"cannot write blob {key!r} to {self.url}: {exc}") from exc
        return BlobRef(key=key, sha256=digest, size=view.nbytes)

    # -- reading ---------------------------------------------------------------------------

    def _open(self, key: str) -> tuple[BinaryIO, str | None]:
        """Open the blob and read its recorded hash as one consistent pair (see class)."""
        blob = self._blob_path(key)
        with self._lock(key):
            try:
                fileobj: BinaryIO = open(blob, "rb")
            except _MISSING:
                raise BlobNotFoundError(f"no blob {key!r} in {self.url}") from None
            except OSError as exc:
                raise BlobStoreError(f"cannot read blob {key!r} in {self.url}: {exc}") from exc
            try:
                recorded = self._read_recorded(blob)
            except BaseException:
                fileobj.close()
                raise
        return fileobj, recorded

    def get(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        """Read the whole blob and verify it against the recorded and expected sha256."""
        expected = normalize_sha256(expected_sha256, key=key) if expected_sha256 else None
        fileobj, recorded = self._open(key)
        try:
            with fileobj:
                data = fileobj.read()
        except OSError as exc:
            raise BlobStoreError(f"cannot read blob {key!r} in {self.url}: {exc}") from exc
        self._verify(key, hashlib.sha256(data).hexdigest(), recorded, expected)
        return data

    def iter_chunks(
        self,
        key: str,
        chunk_size: int = 1 << 20,
        *,
        expected_sha256: str | None = None,
    ) -> Iterator[bytes]:
        """Stream the blob; a missing key fails here, a hash mismatch after the last chunk."""
        check_chunk_size(chunk_size)
        expected = normalize_sha256(expected_sha256, key=key) if expected_sha256 else None
        fileobj, recorded = self._open(key)

        def read() -> Iterator[bytes]:
            try:
                while chunk := fileobj.read(chunk_size):
                    yield chunk
            except OSError as exc:
                raise BlobStoreError(f"cannot read blob {key!r} in {self.url}: {exc}") from exc

        return ClosingChunks(self._verified_chunks(key, read(), recorded, expected), fileobj.close)

    def stat(self, key: str) -> BlobRef:
        """Recorded sha256 and on-disk size, without reading the bytes."""
        blob = self._blob_path(key)
        with self._lock(key):
            try:
                st = blob.stat()
            except _MISSING:
                raise BlobNotFoundError(f"no blob {key!r} in {self.url}") from None
            if not blob.is_file():
                raise BlobNotFoundError(f"no blob {key!r} in {self.url}")
            recorded = self._read_recorded(blob)
        if recorded is None:
            raise BlobIntegrityError(f"blob {key!r} in {self.url} has no recorded sha256")
        return BlobRef(key=key, sha256=recorded, size=st.st_size)

    def exists(self, key: str) -> bool:
        """Whether the blob file exists (its appearance is the commit point of ``put``)."""
        return self._blob_path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix``; sidecars and temp files are never keys."""
        validate_prefix(prefix)
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix) and key_problem(key) is None:
                    keys.append(key)
        return sorted(keys)

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Remove blob then sidecar (blob first: the key vanishes atomically); idempotent.

        Directories left empty are removed too, so no trace of the key's path remains
        (paths may carry identifiers an erasure should not leave behind).
        """
        blob = self._blob_path(key)
        with self._lock(key):
            try:
                if blob.is_file():
                    blob.unlink(missing_ok=True)
                self._sidecar_path(blob).unlink(missing_ok=True)
            except _MISSING:
                return
            except OSError as exc:
                raise BlobStoreError(f"cannot delete blob {key!r} in {self.url}: {exc}") from exc
        self._prune_empty_dirs(blob.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove ``directory`` and its parents up to (not including) root while empty.

        A concurrent ``put`` into the same directory either creates its temp file first (so
        ``rmdir`` fails with ENOTEMPTY and we stop) or retries its ``mkdir`` (see ``put``).
        """
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
