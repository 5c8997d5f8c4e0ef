"""The service's blob store, from ``LETHE_BLOB_STORE`` (a directory or s3://bucket/prefix)."""

from __future__ import annotations

from functools import lru_cache

from api.config import get_settings
from unlearning_core.store import BlobStore, open_store


@lru_cache
def get_store(location: str | None = None) -> BlobStore:
    return open_store(location or get_settings().blob_store)
