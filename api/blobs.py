"""The service's blob store, from ``LETHE_BLOB_STORE`` (a directory or s3://bucket/prefix)."""

from __future__ import annotations

from functools import lru_cache

from api.auth.tenants import tenant_location
from api.config import get_settings
from unlearning_core.store import BlobStore, open_store


@lru_cache
def get_store(location: str | None = None) -> BlobStore:
    return open_store(location or get_settings().blob_store)


def store_at(url: str, configured: BlobStore | None = None) -> BlobStore:
    """The store a run lives in (its ``store_url``): ``configured`` (the worker's own
    instance) when that is it, else one opened from the URL.

    Every flow that reads or writes a run goes through here, so a run written under its
    tenant's prefix is read back from there, whatever store the worker was started with."""
    if configured is not None and configured.url == url:
        return configured
    return get_store(url)


def tenant_store(tenant: str) -> BlobStore:
    """The store new runs of ``tenant`` are written to: ``<LETHE_BLOB_STORE>/tenants/<tenant>``.

    Runs from before tenants keep the location recorded with them (``store_url``)."""
    return get_store(tenant_location(get_settings().blob_store, tenant))
