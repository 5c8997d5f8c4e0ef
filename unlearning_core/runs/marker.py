"""``recording.json``: the state of a run recorded from the user's own training loop.

``run.json`` is written last and its presence is what makes a run complete. A loop recorded
by :func:`unlearning_core.record_training` may run for hours and may crash; so that a
missing ``run.json`` reads as "incomplete" rather than "no such run", the recorder writes
this marker first (``status: recording``), rewrites it on a crash (``status: incomplete``,
with the error and the steps recorded so far) and once more after ``run.json``
(``status: complete``). Loaders read it only when ``run.json`` is missing: a run is never
used half-written, and its id is never reused (its blobs are already in the store).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from unlearning_core.errors import BlobNotFoundError, BlobStoreError
from unlearning_core.store import BlobStore

MARKER_NAME = "recording.json"
MarkerStatus = Literal["recording", "incomplete", "complete"]


class RecordingMarker(BaseModel):
    run_id: str
    status: MarkerStatus
    started_at: datetime
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    steps_recorded: int = 0
    error: str | None = None  # "ValueError: ..." of the exception that ended the loop
    host: str | None = None
    pid: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def marker_key(prefix: str) -> str:
    return f"{prefix}/{MARKER_NAME}"


def read_marker(store: BlobStore, prefix: str) -> RecordingMarker | None:
    """The run's marker, or None when it has none (a run made by ``lethe train``)."""
    try:
        raw = store.get_json(marker_key(prefix))
    except BlobNotFoundError:
        return None
    try:
        return RecordingMarker.model_validate(raw)
    except ValueError:
        raise BlobStoreError(f"{marker_key(prefix)} in {store.url} is not a recording marker") from None


def write_marker(store: BlobStore, prefix: str, marker: RecordingMarker) -> None:
    marker.updated_at = datetime.now(UTC)
    store.put_json(marker_key(prefix), marker.model_dump(mode="json"))


def describe_unfinished(run_id: str, marker: RecordingMarker) -> str:
    """Why a run that has a marker but no ``run.json`` cannot be used (for :class:`RunError`)."""
    if marker.status == "incomplete":
        return (
            f"run {run_id!r} is incomplete: its training loop stopped with {marker.error or 'an error'} "
            f"after {marker.steps_recorded} recorded steps, so it was never published and cannot be "
            "unlearned; record it again under a new run id"
        )
    return (
        f"run {run_id!r} is incomplete: it is still being recorded, or its process died before "
        f"closing it (started {marker.started_at:%Y-%m-%d %H:%M:%S} UTC); only a run whose "
        "recording closed can be unlearned"
    )
