"""Creating and checking API keys.

Keys are 256-bit random tokens, so a single SHA-256 is the right storage hash (as GitHub
and Stripe do for tokens): slow password hashes exist to resist guessing low-entropy
secrets, and would only add latency to every request here. Lookup is by the hash itself.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth.models import ApiKey
from api.auth.tenants import DEFAULT_TENANT, check_tenant
from api.database.core import utcnow

SCOPES = ("requester", "registry", "admin")
KEY_PREFIX = "lethe_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    db: Session, *, name: str, scopes: list[str], tenant: str = DEFAULT_TENANT, key: str | None = None
) -> tuple[ApiKey, str]:
    """A new key (``key`` lets a deployment bootstrap a known admin key); returns (row, key).

    A :class:`ValueError` names the problem with ``scopes``, ``tenant`` or ``key``."""
    check_tenant(tenant)
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {scopes}")
    plaintext = key or KEY_PREFIX + secrets.token_urlsafe(32)
    if len(plaintext) < 20:
        raise ValueError("an API key must be at least 20 characters")
    row = ApiKey(name=name, tenant=tenant, prefix=plaintext[:12], key_hash=hash_key(plaintext), scopes=sorted(set(scopes)))
    db.add(row)
    db.flush()
    return row, plaintext


def ensure_key(db: Session, *, name: str, scopes: list[str], key: str, tenant: str = DEFAULT_TENANT) -> ApiKey:
    """Create ``key`` unless it exists (idempotent bootstrap on every start)."""
    existing = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    return existing or create_key(db, name=name, scopes=scopes, tenant=tenant, key=key)[0]


def authenticate(db: Session, key: str) -> ApiKey | None:
    row = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def revoke(db: Session, key_id: int) -> bool:
    row = db.get(ApiKey, key_id)
    if row is None:
        return False
    row.revoked_at = row.revoked_at or utcnow()
    return True
