"""The residual scan over HTTP (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth.dependencies import AdminDep, DbDep
from api.purge.residuals import scan

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get(
    "/residuals",
    summary="What still holds an erased subject past its deadline (empty after a purge)",
)
def residuals(_: AdminDep, db: DbDep) -> dict[str, Any]:
    found = scan(db=db)
    return {"count": len(found), "residuals": found}
