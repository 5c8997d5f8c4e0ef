"""Importing a run recorded elsewhere as a model (``POST /models/import``, ``lethe runs import``).

A team that trains with its own loop records the run with
:func:`unlearning_core.record_training` into its tenant's store (or copies it there). The
import verifies the run (:func:`unlearning_core.runs.verify.verify_run`: complete, a
registered model factory that rebuilds the recorded tensors, every blob's sha256, the index
against the tenant's dataset, initial + updates = final for full recordings), then, in one
transaction, creates the model with its completed training run and version 0, exactly as a
training by Lethe leaves them. From then on erasure requests, compaction, reports, webhooks
and the registry treat it like any other model.

The run names no dataset of its own (the user's loop loaded the data); the import attaches
the tenant's dataset to it (``runs/<run_id>/dataset.json``,
:func:`unlearning_core.runs.attach.attach_dataset`) so versions can be evaluated and the
lineage compacted. A run that fails verification is refused with the first problem and
nothing is registered. Verification reads every blob, so importing a large run takes as
long as reading it once.
"""

from __future__ import annotations

from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.compaction.policy import default_policy, merged
from api.datasets import service as datasets
from api.datasets.models import Sample
from api.erasure import service as erasure
from api.errors import ConflictError
from api.jobs.states import JobState
from api.registry import service
from api.registry.models import Model, TrainingRun
from api.registry.schemas import ModelImport
from api.webhooks import service as webhooks
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import DatasetError, MethodError
from unlearning_core.methods import get_method, method_names, version_guarantee
from unlearning_core.methods.auto import AUTO
from unlearning_core.pipeline import run_metrics
from unlearning_core.runs.artifact import run_prefix
from unlearning_core.runs.attach import attach_dataset
from unlearning_core.runs.verify import verify_run
from unlearning_core.store import BlobStore
from unlearning_core.vocab import DEFAULT_UNLEARN_METHOD, TRAIN_METHOD


def _unlearn_method(body: ModelImport, method: Any) -> str:
    chosen = body.unlearn_method or DEFAULT_UNLEARN_METHOD[method]
    if chosen == AUTO:
        return chosen
    if chosen not in method_names():
        raise MethodError(f"unknown unlearn_method {chosen!r}; known: {', '.join(method_names())}")
    if method not in get_method(chosen).trained_with:
        raise MethodError(
            f"unlearn_method {chosen!r} cannot work from this run, recorded for {str(method)!r}"
        )
    return chosen


def import_run(
    *,
    db: Session,
    body: ModelImport,
    store: BlobStore,
    tenant: str,
    actor: str | None = None,
    device: torch.device | str = "cpu",
) -> Model:
    """Verify the run in ``store`` and register it as ``tenant``'s model ``body.name`` with
    version 0 (see the module doc). Raises :class:`ConflictError` (name or run taken),
    :class:`DatasetError` (unknown dataset), :class:`RunError` (the first problem of the
    run), :class:`MethodError`. Commits."""
    if service.get(db=db, name=body.name, tenant=tenant) is not None:
        raise ConflictError(f"a model named {body.name!r} already exists")
    dataset = datasets.get(db=db, name=body.dataset, tenant=tenant)
    if dataset is None:
        raise DatasetError(f"no dataset named {body.dataset!r}; register it with POST /datasets first")
    if db.scalar(select(TrainingRun.id).where(TrainingRun.run_id == body.run_id)) is not None:
        raise ConflictError(f"run {body.run_id!r} is registered already")
    known = db.scalars(select(Sample.sample_id).where(Sample.dataset_id == dataset.id))
    checked = verify_run(store, body.run_id, known_sample_ids=known, registered_only=True, atol=body.atol)

    spec_ref = attach_dataset(store, body.run_id, datasets.dataset_spec(dataset))
    artifact = open_artifact(store, body.run_id)
    artifact.allow_import_path = False
    method = artifact.spec.method
    unlearn_method = _unlearn_method(body, method)
    metrics = run_metrics(artifact, torch.device(device))
    trained = list(artifact.sample_table["sample_ids"])
    ledger = store.get_json(f"{run_prefix(body.run_id)}/ledger.json")

    model = Model(
        tenant=tenant, name=body.name, dataset_id=dataset.id, architecture=checked.model,
        method=str(method), unlearn_method=unlearn_method, status="ready",
        erasure_policy=(
            merged(None, body.erasure_policy.model_dump(exclude_unset=True))
            if body.erasure_policy is not None
            else default_policy()
        ).model_dump(mode="json"),
    )
    verification = {
        "blobs_checked": checked.blobs_checked, "bytes_checked": checked.bytes_checked,
        "steps": checked.steps, "samples": checked.samples, "sum_check": checked.sum_check,
        "max_abs_diff": checked.max_abs_diff, "dataset_attachment": spec_ref.sha256,
        "optimizers": list(artifact.spec.loop.optimizers) if artifact.spec.loop is not None else [],
    }
    try:
        db.add(model)
        db.flush()
        db.add(
            TrainingRun(
                model_id=model.id, run_id=body.run_id, store_url=store.url, method=str(method),
                config={"imported": verification, "dataset": dataset.name}, status=JobState.COMPLETED,
                ledger=ledger, finished_at=artifact.spec.created_at,
            )
        )
        service.publish_version(
            db=db, model=model, number=0, parent=None, method=TRAIN_METHOD,
            weights=artifact.spec.trained_weights, metrics=metrics, event="model.imported", actor=actor,
            payload={"run_id": body.run_id, "dataset": dataset.name, "model_factory": checked.model,
                     "verification": verification},
        )
        late = erasure.add_late_jobs(
            db=db, model=model, erased=datasets.erased_among(db=db, dataset_id=dataset.id, sample_ids=trained)
        )
        if late:  # it trained on samples erased since: applied before it serves
            model.status = "training"
        else:
            webhooks.emit(db, tenant=tenant, kind="version.published", payload={
                "model": model.name, "version": 0, "method": TRAIN_METHOD,
                "guarantee": version_guarantee(TRAIN_METHOD)})
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return model
