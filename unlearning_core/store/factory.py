"""Turn a configured location string into a blob store.

One string (``LETHE_BLOB_STORE`` or a CLI ``--store``) picks the back end, so callers
never branch on back-end types: ``s3://bucket/prefix`` is S3, anything else is a local
directory (``file://`` URLs included), created if missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from unlearning_core.errors import BlobStoreError
from unlearning_core.store.base import BlobStore
from unlearning_core.store.local import LocalBlobStore
from unlearning_core.store.s3 import S3BlobStore
from unlearning_core.store.settings import S3Settings

# A URL scheme followed by "://". Windows drive paths ("C:\\x") do not match.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_store(
    location: str | os.PathLike[str], *, s3_settings: S3Settings | None = None
) -> BlobStore:
    """Open the blob store at ``location``.

    - ``s3://bucket`` or ``s3://bucket/some/prefix`` -> :class:`S3BlobStore` with
      ``s3_settings`` (default: read from ``LETHE_S3_*``);
    - ``file:///abs/dir`` or a plain path -> :class:`LocalBlobStore`, created if missing.

    Any other ``scheme://`` is refused rather than silently becoming a local directory
    literally named ``gs:`` or ``http:``.
    """
    if isinstance(location, os.PathLike):
        return LocalBlobStore(Path(location))
    text = str(location).strip()
    match = _SCHEME.match(text)
    if match is None:
        if not text:
            raise BlobStoreError("blob store location is empty")
        return LocalBlobStore(Path(text))
    scheme = match.group(1).lower()
    parts = urlsplit(text)
    if scheme == "s3":
        if not parts.netloc:
            raise BlobStoreError(f"S3 location {text!r} names no bucket (want s3://bucket/prefix)")
        return S3BlobStore(parts.netloc, parts.path.strip("/"), s3_settings)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BlobStoreError(f"file URL {text!r} names a remote host; use a local path")
        path = unquote(parts.path)
        if not path:
            raise BlobStoreError(f"file URL {text!r} names no directory")
        return LocalBlobStore(Path(path))
    raise BlobStoreError(
        f"unsupported blob store location {text!r}: use s3://bucket/prefix or a local path"
    )
