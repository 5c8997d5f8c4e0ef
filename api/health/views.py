"""``/healthz``: the process answers. ``/readyz``: the database and the blob store answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.auth.dependencies import DbDep
from api.blobs import get_store

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database and blob store reachable")
def readyz(db: DbDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any failure, it does not raise
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        get_store().exists("readyz-probe")
        checks["blob_store"] = "ok"
    except Exception as exc:
        checks["blob_store"] = f"error: {type(exc).__name__}: {exc}"[:300]
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
