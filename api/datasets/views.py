"""Dataset endpoints (admin scope): register from a source or an upload, list, show."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from api.auth.dependencies import AdminDep, DbDep
from api.datasets import service
from api.datasets.config import dataset_roots
from api.datasets.models import Dataset
from api.datasets.schemas import (
    MAX_SEED,
    MAX_SUBJECT_SIZE,
    NAME_PATTERN,
    DatasetCreate,
    DatasetOut,
)
from api.datasets.service import DatasetCounts

router = APIRouter(prefix="/datasets", tags=["datasets"])

ERRORS = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key lacks the admin scope"},
}


def to_out(dataset: Dataset, counts: DatasetCounts) -> DatasetOut:
    return DatasetOut(
        name=dataset.name,
        source=dataset.source,
        num_classes=dataset.num_classes,
        num_samples=dataset.num_samples,
        split_seed=dataset.split_seed,
        test_fraction=dataset.test_fraction,
        subject_size=dataset.subject_size,
        samples=counts.samples,
        subjects=counts.subjects,
        erased=counts.erased,
        info=dataset.info or {},
        created_at=dataset.created_at,
    )


def _out(db, dataset: Dataset) -> DatasetOut:  # type: ignore[no-untyped-def]
    return to_out(dataset, service.counts(db=db, dataset_ids=[dataset.id])[dataset.id])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    summary="Register a dataset (built-in name or server-side path); one sample row per training sample",
    responses={
        **ERRORS,
        403: {
            "description": "The key lacks the admin scope, or the source is a server path outside "
            "the directories the operator allows (LETHE_DATASET_ROOTS)"
        },
        409: {"description": "Your tenant has a dataset of that name"},
        422: {"description": "Unreadable or invalid dataset"},
    },
)
def create_dataset(body: DatasetCreate, principal: AdminDep, db: DbDep) -> DatasetOut:
    dataset = service.register(
        tenant=principal.tenant,
        roots=dataset_roots(),
        db=db,
        name=body.name,
        source=body.source,
        subject_size=body.subject_size,
        subject_map=body.subject_map,
        split_seed=body.split_seed,
        test_fraction=body.test_fraction,
        actor=principal.name,
    )
    return _out(db, dataset)


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    summary="Upload an .npz manifest (images, labels, sample_ids, optional subject_ids / test_*) and register it",
    responses={
        **ERRORS,
        409: {"description": "Your tenant has a dataset of that name"},
        413: {"description": "Body too large"},
        422: {"description": "Invalid manifest"},
    },
)
def upload_dataset(
    principal: AdminDep,
    db: DbDep,
    file: Annotated[UploadFile, File(description="The .npz manifest")],
    name: Annotated[str, Form(pattern=NAME_PATTERN)],
    subject_size: Annotated[int | None, Form(ge=1, le=MAX_SUBJECT_SIZE)] = None,
    split_seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = 0,
    test_fraction: Annotated[float, Form(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.2,
    subject_map: Annotated[
        UploadFile | None,
        File(description="Optional CSV (sample_id,subject_id header) or Parquet file naming every "
             "training sample's data subject (instead of subject_size or the manifest's subject_ids)"),
    ] = None,
) -> DatasetOut:
    dataset = service.register_upload(
        tenant=principal.tenant,
        db=db,
        name=name,
        fileobj=file.file,
        subject_size=subject_size,
        split_seed=split_seed,
        test_fraction=test_fraction,
        actor=principal.name,
        filename=file.filename,
        subject_map=subject_map.file if subject_map is not None else None,
        subject_map_filename=subject_map.filename if subject_map is not None else None,
    )
    return _out(db, dataset)


@router.get(
    "",
    response_model=list[DatasetOut],
    summary="List your tenant's datasets with sample, subject and erased counts",
    responses=ERRORS,
)
def list_datasets(principal: AdminDep, db: DbDep) -> list[DatasetOut]:
    datasets = service.get_all(db=db, tenant=principal.tenant)
    counts = service.counts(db=db, dataset_ids=[d.id for d in datasets])
    return [to_out(d, counts[d.id]) for d in datasets]


@router.get(
    "/{name}",
    response_model=DatasetOut,
    summary="One dataset with sample, subject and erased counts",
    responses={**ERRORS, 404: {"description": "Unknown dataset (or another tenant's)"}},
)
def get_dataset(name: str, principal: AdminDep, db: DbDep) -> DatasetOut:
    return _out(db, service.get_or_raise(db=db, name=name, tenant=principal.tenant))
