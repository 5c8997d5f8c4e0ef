"""FastAPI dependencies for authentication and scopes.

``admin`` implies every scope. Tenancy is enforced where data is read: a principal only
ever sees its own tenant's requests (admins included: an admin administers its tenant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth.service import authenticate
from api.database.core import get_db

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer lethe_...`")


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    tenant: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def current_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    db: Annotated[Session, Depends(get_db)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    row = authenticate(db, credentials.credentials)
    if row is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return Principal(key_id=row.id, name=row.name, tenant=row.tenant, scopes=frozenset(row.scopes))


def require_scope(scope: str) -> Callable[[Principal], Principal]:
    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key lacks the {scope!r} scope")
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


RequesterDep = Annotated[Principal, Depends(require_scope("requester"))]
AdminDep = Annotated[Principal, Depends(require_scope("admin"))]
RegistryDep = Annotated[Principal, Depends(require_scope("registry"))]
DbDep = Annotated[Session, Depends(get_db)]
