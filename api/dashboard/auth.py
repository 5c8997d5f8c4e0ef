"""Dashboard sign-in: an admin API key typed once, remembered in the session cookie.

The cookie (Starlette's ``SessionMiddleware``: signed, httpOnly, ``SameSite=strict``,
path ``/dashboard``) holds the key's row id, never the key: the key is checked once at
login, and every page re-reads the row, so revoking the key or its admin scope ends the
session at the next click. SameSite=strict keeps other sites' forms from posting with it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.auth.dependencies import DbDep, Principal
from api.auth.models import ApiKey
from api.auth.service import authenticate

SESSION_KEY = "admin_key_id"
LOGIN_PATH = "/dashboard/login"


class LoginRequired(Exception):
    """No valid admin session: the handler sends the browser to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def check_key(db: Session, key: str) -> tuple[ApiKey | None, str | None]:
    """``(row, None)`` for a valid admin key, else ``(None, message for the form)``."""
    key = key.strip()
    if not key:
        return None, "Enter an admin API key."
    row = authenticate(db, key)
    if row is None:
        return None, "Unknown or revoked API key."
    if "admin" not in row.scopes:
        return None, "This key has no admin scope; the dashboard needs an admin key."
    return row, None


def _principal(row: ApiKey) -> Principal:
    return Principal(key_id=row.id, name=row.name, tenant=row.tenant, scopes=frozenset(row.scopes))


def login(request: Request, row: ApiKey) -> None:
    request.session.clear()
    request.session[SESSION_KEY] = row.id


def logout(request: Request) -> None:
    request.session.clear()


def safe_next(value: str | None) -> str:
    """Only a dashboard path (no ``//host`` or scheme): login must not redirect elsewhere."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard/requests"


def dashboard_principal(request: Request, db: DbDep) -> Principal:
    key_id = request.session.get(SESSION_KEY)
    row = db.get(ApiKey, key_id) if isinstance(key_id, int) else None
    if row is None or row.revoked_at is not None or "admin" not in row.scopes:
        request.session.clear()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)
    return _principal(row)


AdminSession = Annotated[Principal, Depends(dashboard_principal)]
