"""Model registry (registry scope; admin implies it) and training through the API (admin).

``{version}`` is a number or ``latest`` everywhere; unknown models and versions are 404s
raised by :mod:`api.registry.dependencies`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from api.auth.dependencies import AdminDep, DbDep, RegistryDep, require_scope
from api.blobs import tenant_store
from api.compaction.policy import policy_of
from api.database.core import utcnow
from api.registry import importing, service, withdrawal
from api.registry.dependencies import LATEST, ModelDep, VersionDep
from api.registry.models import Model, ModelVersion
from api.registry.reports import version_report
from api.registry.schemas import ModelCreate, ModelImport, ModelOut, ModelSummary, TrainingRunOut, VersionOut
from unlearning_core.errors import BlobIntegrityError
from unlearning_core.methods import version_guarantee
from unlearning_core.report.html import render_pdf
from unlearning_core.store import BlobStore

router = APIRouter(
    prefix="/models", tags=["registry"], dependencies=[Depends(require_scope("registry"))]
)

AUTH_ERRORS = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key lacks the registry scope (admin for POST)"},
}
NOT_FOUND = {404: {"description": "Unknown model or version"}}
GONE = {
    410: {
        "description": "The version was withdrawn (a newer one answers erasure requests whose "
        "data it held); `Link: </models/{name}/versions/{n}>; rel=\"successor-version\"`"
    }
}


def weights_url(model_name: str, number: int) -> str:
    return f"/models/{model_name}/versions/{number}/weights"


def _model_out(db, model: Model) -> ModelOut:  # type: ignore[no-untyped-def]
    run = service.latest_run(db=db, model_id=model.id)
    latest = service.latest_version(db=db, model_id=model.id)
    return ModelOut(
        name=model.name,
        dataset=service.dataset_name(db=db, model=model),
        architecture=model.architecture,
        method=model.method,
        unlearn_method=model.unlearn_method,
        status=model.status,
        latest_version=latest.number if latest else None,
        created_at=model.created_at,
        versions=service.count_versions(db=db, model_id=model.id),
        erasure_policy=policy_of(model.erasure_policy),
        training=TrainingRunOut(
            run_id=run.run_id,
            kind=run.kind,
            status=run.status,
            error=run.error,
            store_url=run.store_url,
            config=run.config,
            created_at=run.created_at,
            finished_at=run.finished_at,
        )
        if run
        else None,
    )


def _versions_out(db, model: Model, versions: list[ModelVersion], tenant: str) -> list[VersionOut]:  # type: ignore[no-untyped-def]
    ids = [v.id for v in versions]
    answered = service.answers(db=db, version_ids=ids, tenant=tenant)
    gone = withdrawal.of_versions(db=db, version_ids=ids)
    mine = service.tenant_requests(db=db, request_ids={r for w in gone.values() for r in w.request_ids}, tenant=tenant)
    now = utcnow()

    def withdrawn(v: ModelVersion) -> dict[str, Any]:
        w = gone.get(v.id)
        if w is None:
            return {}
        return {
            "withdraw_at": w.effective_at,
            "withdrawn_at": w.effective_at if w.in_force(now) else None,
            "successor": w.successor_number,
            "withdrawn_for": [r for r in w.request_ids if r in mine],
        }

    return [
        VersionOut(
            model=model.name,
            number=v.number,
            parent=v.parent_number,
            method=v.method,
            guarantee=version_guarantee(v.method),
            created_at=v.created_at,
            weights_sha256=v.weights_sha256,
            size=v.weights_size,
            metrics=v.metrics or {},
            answers=answered[v.id],
            weights_url=weights_url(model.name, v.number),
            **withdrawn(v),
        )
        for v in versions
    ]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ModelOut,
    summary="Create a model and queue its training (admin); the worker trains it and publishes version 0",
    responses={
        **AUTH_ERRORS,
        409: {"description": "Name taken"},
        422: {"description": "Unknown dataset or architecture, bad settings"},
    },
)
def create_model(body: ModelCreate, principal: AdminDep, db: DbDep, response: Response) -> ModelOut:
    model, _run = service.create(
        db=db, spec=body, store=tenant_store(principal.tenant), actor=principal.name, tenant=principal.tenant
    )
    response.headers["Location"] = f"/models/{model.name}"
    return _model_out(db, model)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    summary="Register a run recorded elsewhere (record_training) as a model with version 0 (admin); "
    "verified first, refused with its first problem",
    responses={
        **AUTH_ERRORS,
        409: {"description": "Name taken, or the run is registered already"},
        422: {"description": "Unknown dataset; the run is incomplete, fails a check (named), or its "
              "model factory is not a registered model"},
    },
)
def import_model(body: ModelImport, principal: AdminDep, db: DbDep, response: Response) -> ModelOut:
    model = importing.import_run(
        db=db, body=body, store=tenant_store(principal.tenant), tenant=principal.tenant, actor=principal.name,
    )
    response.headers["Location"] = f"/models/{model.name}"
    return _model_out(db, model)


@router.get(
    "",
    response_model=list[ModelSummary],
    summary="List models with their latest version",
    responses=AUTH_ERRORS,
)
def list_models(principal: RegistryDep, db: DbDep) -> list[ModelSummary]:
    return [
        ModelSummary(
            name=m.name,
            dataset=dataset,
            architecture=m.architecture,
            method=m.method,
            unlearn_method=m.unlearn_method,
            status=m.status,
            latest_version=latest,
            created_at=m.created_at,
        )
        for m, dataset, latest in service.get_all(db=db, tenant=principal.tenant)
    ]


@router.get(
    "/{name}",
    response_model=ModelOut,
    summary="One model, with its training run",
    responses={**AUTH_ERRORS, **NOT_FOUND},
)
def get_model(model: ModelDep, db: DbDep) -> ModelOut:
    return _model_out(db, model)


@router.get(
    "/{name}/versions",
    response_model=list[VersionOut],
    summary="A model's versions, oldest first, with metrics and the erasure requests each answers",
    responses={**AUTH_ERRORS, **NOT_FOUND},
)
def list_versions(model: ModelDep, principal: RegistryDep, db: DbDep) -> list[VersionOut]:
    return _versions_out(
        db, model, service.get_versions(db=db, model_id=model.id), principal.tenant
    )


@router.get(
    "/{name}/versions/{version}",
    response_model=VersionOut,
    summary="One version's metadata (`latest` for the newest)",
    responses={**AUTH_ERRORS, **NOT_FOUND},
)
def get_version(
    model: ModelDep, version: VersionDep, principal: RegistryDep, db: DbDep
) -> VersionOut:
    return _versions_out(db, model, [version], principal.tenant)[0]


def _etag_matches(header: str | None, sha256: str) -> bool:
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag.strip('"') == sha256:
            return True
    return False


def _store_for(db, model: Model) -> BlobStore:  # type: ignore[no-untyped-def]
    return service.store_of(db=db, model=model)


def _chunks(store: BlobStore, version: ModelVersion) -> Iterator[bytes]:
    # Verified against the version's sha256 as it streams; a mismatch aborts the response
    # before its last byte, so a client checking Content-Length or the ETag notices.
    chunks = store.iter_chunks(version.weights_key, expected_sha256=version.weights_sha256)
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _refuse_withdrawn(db, model: Model, row: ModelVersion, what: str) -> None:  # type: ignore[no-untyped-def]
    """410 Gone, with the successor's link, for a version withdrawn in force."""
    gone = withdrawal.in_force(db=db, version=row)
    if gone is not None:
        successor = f"/models/{model.name}/versions/{gone.successor_number}"
        raise HTTPException(
            status.HTTP_410_GONE,
            f"model {model.name!r} version {row.number} was withdrawn at "
            f"{gone.effective_at.isoformat()}: version {gone.successor_number} answers erasure "
            f"requests whose data it held; its {what} are no longer served",
            headers={"Link": f'<{successor}>; rel="successor-version"'},
        )


@router.head(
    "/{name}/versions/{version}/weights",
    response_class=Response,
    summary="Headers of a version's weights (ETag, Content-Length) without the body",
    operation_id="head_weights",
    responses={**AUTH_ERRORS, **NOT_FOUND, **GONE},
)
@router.get(
    "/{name}/versions/{version}/weights",
    response_class=StreamingResponse,
    summary="Download a version's weights (safetensors), streamed; ETag is the sha256, If-None-Match gives 304",
    operation_id="download_weights",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The safetensors file"},
        304: {"description": "Not modified (If-None-Match matched the sha256)"},
        **AUTH_ERRORS,
        **NOT_FOUND,
        **GONE,
    },
)
def download_weights(
    version: str, model: ModelDep, row: VersionDep, request: Request, db: DbDep
) -> Response:
    if model.status != "ready":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"model {model.name!r} is {model.status}: its weights are served once it is ready "
            "(erasures that arrived while it trained are applied first)",
        )
    _refuse_withdrawn(db, model, row, "weights")
    sha = row.weights_sha256
    headers = {
        "ETag": f'"{sha}"',
        # A numbered version never changes; what "latest" points at does.
        "Cache-Control": "no-cache"
        if version == LATEST
        else "private, max-age=31536000, immutable",
        "X-Lethe-Version": str(row.number),
        "X-Content-SHA256": sha,
    }
    if _etag_matches(request.headers.get("if-none-match"), sha):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    store = _store_for(db, model)
    try:
        ref = store.stat(row.weights_key)
    except BlobIntegrityError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from None
    if ref.sha256 != sha or ref.size != row.weights_size:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"weights blob {row.weights_key!r} of {model.name} v{row.number} does not match the sha256 "
            "recorded for the version; refusing to serve it",
        )
    headers["Content-Length"] = str(ref.size)
    headers["Content-Disposition"] = (
        f'attachment; filename="{model.name}-v{row.number}.safetensors"'
    )
    if request.method == "HEAD":
        return Response(
            status_code=status.HTTP_200_OK, headers=headers, media_type="application/octet-stream"
        )
    return StreamingResponse(
        _chunks(store, row), media_type="application/octet-stream", headers=headers
    )


@router.get(
    "/{name}/versions/{version}/report",
    response_class=Response,
    summary="A version's erasure report: requests answered, method and guarantee, metrics, "
    "Grad-CAM grid, accuracy timeline, sha256s, audit position (HTML, or ?format=pdf)",
    operation_id="version_report",
    responses={
        200: {
            "content": {"text/html": {}, "application/pdf": {}},
            "description": "The report (self-contained HTML, or the same page as PDF)",
        },
        **AUTH_ERRORS,
        404: {"description": "Unknown model or version, or the version has no report for your tenant"},
        **GONE,
    },
)
def get_report(
    model: ModelDep,
    row: VersionDep,
    principal: RegistryDep,
    db: DbDep,
    format: Annotated[Literal["html", "pdf"], Query(description="html (default) or pdf")] = "html",
) -> Response:
    _refuse_withdrawn(db, model, row, "report")
    html = version_report(store=_store_for(db, model), model_name=model.name, row=row, tenant=principal.tenant)
    headers = {"X-Content-SHA256": row.report_sha256, "X-Lethe-Version": str(row.number)}
    if format == "pdf":
        headers["Content-Disposition"] = f'inline; filename="{model.name}-v{row.number}-report.pdf"'
        return Response(render_pdf(html.decode("utf-8")), media_type="application/pdf", headers=headers)
    return Response(html, media_type="text/html; charset=utf-8", headers=headers)
