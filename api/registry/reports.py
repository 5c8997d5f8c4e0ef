"""Erasure reports on the service side: render one when a version is published, read it back.

The worker calls :func:`publish_report` inside the transaction that records the version, so
the report can name the audit event that publishes it (position and hash in the chain) and
its key and sha256 go into the version's row when the row is written (rows are never
updated). What the library needs from the database (request ids, subject, counts, the
audit position) is handed to :func:`unlearning_core.report.build.erasure_report` as plain
data. A report that cannot be rendered does not hold up the erasure: the version is
published without one and the failure is logged (the audit chain's event kinds per job
stay as they were).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, status

from api.audit.models import AuditEvent
from api.errors import NotFoundError, is_transient
from api.registry.models import ModelVersion
from unlearning_core.errors import BlobStoreError
from unlearning_core.pipeline import MethodRun, save_erasure_record
from unlearning_core.report.build import AuditPosition, RequestRef, erasure_report
from unlearning_core.runs.ledger import Ledger
from unlearning_core.store import BlobRef, BlobStore

log = logging.getLogger("lethe.reports")


@dataclass(frozen=True)
class Published:
    ref: BlobRef | None
    error: str | None = None


def report_key(run_id: str, version: int) -> str:
    return f"runs/{run_id}/reports/v{version:04d}.html"


def publish_report(
    *,
    store: BlobStore,
    done: MethodRun,
    ledger: Ledger,
    model_name: str,
    request_id: str,
    subject_id: str | None,
    metrics: dict[str, Any],
    audit: AuditEvent,
) -> Published:
    """Write the erasure record and the report of ``done``'s new version; never raises for
    a rendering problem (only for a transient fault, so the job is retried)."""
    entry = done.version
    assert entry is not None
    run = done.context.artifact
    try:
        save_erasure_record(done, metrics, f"{len(done.context.forget_ids)} sample ids of request {request_id}")
        report = erasure_report(
            run,
            ledger,
            entry.version,
            device=done.context.device,
            model_name=model_name,
            requests=[RequestRef(id=request_id, subject_id=subject_id, samples=len(done.context.forget_ids))],
            audit=AuditPosition(id=audit.id, seq=audit.seq, kind=audit.kind, hash=audit.hash, prev_hash=audit.prev_hash),
            metrics=metrics,
        )
        ref = store.put(report_key(run.run_id, entry.version), report.html.encode("utf-8"))
    except Exception as exc:
        if is_transient(exc):
            raise
        log.exception("report of %s v%s could not be rendered", model_name, entry.version)
        return Published(ref=None, error=f"{type(exc).__name__}: {exc}"[:500])
    return Published(ref=ref)


def read_report(store: BlobStore, key: str, sha256: str) -> bytes:
    """The stored HTML, verified against the sha256 recorded in the version row."""
    return store.get(key, expected_sha256=sha256)


def has_report(row: ModelVersion, tenant: str) -> bool:
    """Whether ``tenant`` may read the version's report (it names that tenant's requests)."""
    return row.report_key is not None and row.report_sha256 is not None and row.report_tenant == tenant


def version_report(*, store: BlobStore, model_name: str, row: ModelVersion, tenant: str) -> bytes:
    """The report HTML of ``row`` for ``tenant``, for the registry route and the dashboard.

    Another tenant's report names its request ids, so it gets the same 404 as "no report".
    A blob that is missing or fails its sha256 is a server-side fault (500 naming it).
    """
    if not has_report(row, tenant):
        why = " (version 0 is the trained model; reports come with erasures)" if row.number == 0 else ""
        raise NotFoundError(f"model {model_name!r} version {row.number} has no erasure report{why}")
    try:
        return read_report(store, row.report_key or "", row.report_sha256 or "")
    except BlobStoreError as exc:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"report of {model_name} v{row.number} cannot be served: {exc}",
        ) from None
