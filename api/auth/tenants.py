"""Tenants: a name every key, dataset, model, request, webhook and audit event carries.

A tenant is named by its keys (``lethe keys create --tenant``); it has no row of its own.
Its name becomes part of blob keys (``tenants/<tenant>/runs/...``) and of upload folders,
so it is restricted to what is safe in a path and in an S3 key.
"""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TENANT_RE = re.compile(TENANT_PATTERN)


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid name, else a :class:`ValueError` naming the rule."""
    if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(
            f"tenant {tenant!r} is not a valid name: 1 to 64 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return tenant


def tenant_location(base: str, tenant: str) -> str:
    """Where ``tenant``'s blobs live under a store location (a directory or s3://bucket/prefix).

    Every run a tenant trains is written under its own prefix, so a tenant's blobs can be
    listed, moved, encrypted or deleted apart from every other tenant's.
    """
    return f"{base.rstrip('/')}/tenants/{check_tenant(tenant)}"
