"""The residual scan over HTTP (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth.dependencies import AdminDep, DbDep
from api.purge.residuals import scan

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get(
    "/residuals",
    summary="What of your tenant still holds an erased subject past its deadline (empty after a purge)",
)
def residuals(principal: AdminDep, db: DbDep) -> dict[str, Any]:
    found = scan(db=db, tenant=principal.tenant)
    return {"count": len(found), "residuals": found}
