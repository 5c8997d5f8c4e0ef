"""Audit endpoints (admin): the chain's verification."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.audit.service import verify
from api.auth.dependencies import AdminDep, DbDep

router = APIRouter(prefix="/admin/audit", tags=["admin"])


@router.get("/verify", summary="Verify the audit hash chain; reports the first broken link")
def verify_chain(_: AdminDep, db: DbDep) -> dict[str, Any]:
    return verify(db)
