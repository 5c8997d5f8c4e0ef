"""The dashboard's pages (``/dashboard``), its static files and its session middleware.

Pages (admin session required; the admin's tenant only):

- ``/dashboard/requests``: filter by status, subject, model, overdue; counts by status;
  rows refresh every few seconds (htmx polls ``/dashboard/requests/rows``) while one can
  still change;
- ``/dashboard/requests/{id}``: status, per-model jobs with progress, the versions they
  published with their metrics, the audit timeline (polls ``.../live`` until final);
- ``/dashboard/models`` and ``/dashboard/models/{name}``: versions with metrics and a chart
  of forget / retain / test accuracy and MIA AUC per version;
- ``/dashboard/audit``: verification of the hash chain and the tenant's latest events.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Query, Request, status
from fastapi import Path as Path_
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.middleware.sessions import SessionMiddleware

from api.auth.dependencies import DbDep, Principal
from api.config import Settings
from api.dashboard import auth, service
from api.dashboard.auth import AdminSession, LoginRequired
from api.erasure.service import RequestFilter
from api.erasure.states import RequestStatus

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/dashboard", include_in_schema=False)

#: Everything from this origin, nothing inline: the page data the charts need travel as
#: JSON in a ``<script type="application/json">`` block, which is data, not code.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
REQUEST_STATUSES = [s.value for s in RequestStatus if s != RequestStatus.RECEIVED]


def _dt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


templates.env.filters["dt"] = _dt
templates.env.filters["num"] = _num
templates.env.globals["VERSION_METRICS"] = service.VERSION_METRICS


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=SECURITY_HEADERS)


# ---------------------------------------------------------------------------------------
# Login
# ---------------------------------------------------------------------------------------


@router.get("", response_class=RedirectResponse)
def home() -> RedirectResponse:
    return RedirectResponse("/dashboard/requests", status.HTTP_303_SEE_OTHER)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> HTMLResponse:
    return render(request, "login.html", {"next": auth.safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    db: DbDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    row, error = auth.check_key(db, api_key)
    if row is None:
        return render(
            request, "login.html", {"next": auth.safe_next(next), "error": error},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    auth.login(request, row)
    return RedirectResponse(auth.safe_next(next), status.HTTP_303_SEE_OTHER)


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    auth.logout(request)
    return RedirectResponse(auth.LOGIN_PATH, status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


def _filters(status_: str | None, subject: str | None, model: str | None, overdue: str | None) -> RequestFilter:
    """The filter form's values; empty fields mean "any". Unknown values are a 422."""
    statuses = None
    if status_:
        if status_ not in REQUEST_STATUSES:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"unknown status {status_!r}; one of {', '.join(REQUEST_STATUSES)}",
            )
        statuses = [RequestStatus(status_)]
    if overdue not in (None, "", "yes", "no"):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "overdue must be yes, no or empty")
    return RequestFilter(
        status=statuses,
        subject_id=subject or None,
        model=model or None,
        overdue=None if not overdue else overdue == "yes",
    )


StatusQ = Annotated[str | None, Query(alias="status", max_length=32)]
SubjectQ = Annotated[str | None, Query(max_length=256)]
ModelQ = Annotated[str | None, Query(max_length=128)]
OverdueQ = Annotated[str | None, Query(max_length=3)]
OffsetQ = Annotated[int, Query(ge=0)]


def _requests_context(
    principal: Principal, db: Session, status_: str | None, subject: str | None, model: str | None,
    overdue: str | None, offset: int,
) -> dict[str, Any]:
    page = service.requests_page(
        db=db, principal=principal, filters=_filters(status_, subject, model, overdue), offset=offset
    )
    form = {"status": status_ or "", "subject": subject or "", "model": model or "", "overdue": overdue or ""}
    query = urlencode({k: v for k, v in form.items() if v})
    return {
        "principal": principal, "page": page, "form": form, "query": query,
        "statuses": REQUEST_STATUSES, "models": [m.name for m in service.models(db=db, principal=principal)], "nav": "requests",
    }


@router.get("/requests", response_class=HTMLResponse)
def requests_list(
    request: Request, principal: AdminSession, db: DbDep, status_: StatusQ = None, subject: SubjectQ = None,
    model: ModelQ = None, overdue: OverdueQ = None, offset: OffsetQ = 0,
) -> HTMLResponse:
    return render(request, "requests.html", _requests_context(principal, db, status_, subject, model, overdue, offset))


@router.get("/requests/rows", response_class=HTMLResponse)
def requests_rows(
    request: Request, principal: AdminSession, db: DbDep, status_: StatusQ = None, subject: SubjectQ = None,
    model: ModelQ = None, overdue: OverdueQ = None, offset: OffsetQ = 0,
) -> HTMLResponse:
    """The table body and counts only: what the list page polls."""
    return render(
        request, "_requests_live.html", _requests_context(principal, db, status_, subject, model, overdue, offset)
    )


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: str, principal: AdminSession, db: DbDep) -> HTMLResponse:
    detail = service.request_detail(db=db, principal=principal, request_id=request_id[:64])
    return render(request, "request.html", {"principal": principal, "d": detail, "nav": "requests"})


@router.get("/requests/{request_id}/live", response_class=HTMLResponse)
def request_live(request: Request, request_id: str, principal: AdminSession, db: DbDep) -> HTMLResponse:
    detail = service.request_detail(db=db, principal=principal, request_id=request_id[:64])
    return render(request, "_request_live.html", {"principal": principal, "d": detail})


# ---------------------------------------------------------------------------------------
# Models and audit
# ---------------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, principal: AdminSession, db: DbDep) -> HTMLResponse:
    return render(request, "models.html", {"principal": principal, "models": service.models(db=db, principal=principal), "nav": "models"})


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str, principal: AdminSession, db: DbDep) -> HTMLResponse:
    history = service.model_history(db=db, principal=principal, name=name[:128])
    return render(
        request, "model.html",
        {"principal": principal, "h": history, "chart": json.dumps(history.chart()).replace("<", "\\u003c"), "nav": "models"},
    )


@router.get("/models/{name}/versions/{number}/report", response_class=HTMLResponse)
def version_report_page(
    name: str, number: Annotated[int, Path_(ge=0, le=2**31 - 1)], principal: AdminSession, db: DbDep
) -> HTMLResponse:
    """The version's erasure report (the same stored, sha256-checked page as the registry's
    ``/models/{name}/versions/{version}/report``), for a browser signed in with a session."""
    html = service.report_html(db=db, principal=principal, name=name[:128], number=number)
    # The report is a self-contained page: inline images and styles, no script at all.
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Content-Security-Policy": csp})


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, principal: AdminSession, db: DbDep) -> HTMLResponse:
    return render(request, "audit.html", {"principal": principal, "a": service.audit_page(db=db, principal=principal), "nav": "audit"})


# ---------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------


async def _to_login(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    target = f"{auth.LOGIN_PATH}?next={quote(exc.next_path, safe='')}"
    if request.headers.get("HX-Request"):  # a polled fragment: send the whole page to login
        return Response(status_code=status.HTTP_401_UNAUTHORIZED, headers={"HX-Redirect": target})
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the dashboard: its pages, its static files and the session cookie."""
    secret = (
        settings.session_secret.get_secret_value() if settings.session_secret is not None else secrets.token_urlsafe(32)
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="lethe_dashboard",
        max_age=settings.session_max_age_seconds,
        path="/dashboard",
        same_site="strict",
        https_only=settings.session_cookie_secure,
    )
    app.add_exception_handler(LoginRequired, _to_login)
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
