"""Datasets: registering one (a row per training sample), reading them back with counts.

Service functions are keyword-only and commit their own transaction, so the API, the CLI
and the demo seeding call the same code. A registration is all-or-nothing: the dataset is
loaded (and validated) by :func:`unlearning_core.data.load_dataset` before anything is
written, and the dataset row, its samples and the audit event share one transaction.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.audit.service import append as audit
from api.auth.tenants import DEFAULT_TENANT
from api.database.core import utcnow
from api.datasets.config import tenant_upload_dir, upload_dir
from api.datasets.models import Dataset, Sample
from api.datasets.schemas import MAX_SEED, MAX_SUBJECT_SIZE
from api.errors import ConflictError, ForbiddenError, NotFoundError
from unlearning_core.data import DATASET_NAMES, load_dataset
from unlearning_core.data.plugins import is_dataset_plugin
from unlearning_core.data.subjects import read_subject_map
from unlearning_core.data.sampleset import Dataset as LoadedDataset
from unlearning_core.errors import DatasetError
from unlearning_core.runs.spec import DatasetSpec
from unlearning_core.store import BlobStore

#: How long a normalised source may be (the ``datasets.source`` column).
SOURCE_COLUMN_LENGTH: int = Dataset.__table__.c.source.type.length  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DatasetCounts:
    samples: int = 0
    subjects: int = 0
    erased: int = 0


def normalise_source(source: str) -> str:
    """Built-in names lower-cased; paths made absolute, so any later process reloads the same files.

    A source no path can be (a NUL character, text the file system cannot encode, an unknown
    ``~user``, a name too long) is a :class:`DatasetError` naming it, not a crash.
    """
    key = source.strip()
    if key.lower() in DATASET_NAMES:
        return key.lower()
    if key and is_dataset_plugin(key):  # an installed loader, named like a built-in
        return key.lower().replace("_", "-")
    if "\x00" in key:
        raise DatasetError(f"unknown dataset {source!r}: a path cannot hold a NUL character")
    try:
        return str(Path(key).expanduser().resolve())
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: UnicodeEncodeError
        raise DatasetError(f"unknown dataset {source!r}: not a usable path ({exc})") from None


def _load(source: str, **options: Any) -> LoadedDataset:
    """:func:`load_dataset`, with file system errors (a name too long, no permission, an
    unreadable file, text the file system cannot encode) as :class:`DatasetError`."""
    try:
        return load_dataset(source, **options)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DatasetError(f"dataset {source[:200]!r} cannot be read: {reason}") from None


def sample_ids_digest(sample_ids: Iterable[str]) -> str:
    """sha256 over the ordered training sample ids: a run trained later must see the same."""
    h = hashlib.sha256()
    for sid in sample_ids:
        h.update(sid.encode())
        h.update(b"\n")
    return h.hexdigest()


def get(*, db: Session, name: str, tenant: str) -> Dataset | None:
    """``tenant``'s dataset ``name`` (another tenant's is None, as if it did not exist)."""
    return db.scalar(select(Dataset).where(Dataset.tenant == tenant, Dataset.name == name))


def get_or_raise(*, db: Session, name: str, tenant: str) -> Dataset:
    dataset = get(db=db, name=name, tenant=tenant)
    if dataset is None:
        raise NotFoundError(f"no dataset named {name!r}")
    return dataset


def get_all(*, db: Session, tenant: str) -> list[Dataset]:
    return list(db.scalars(select(Dataset).where(Dataset.tenant == tenant).order_by(Dataset.name)))


def check_source_allowed(source: str, roots: list[Path], *, what: str = "source") -> None:
    """A :class:`ForbiddenError` unless ``source`` is a built-in dataset or a path under one
    of ``roots`` (the operator's ``LETHE_DATASET_ROOTS``), and never inside the upload folder.

    Checked on the resolved path (symlinks followed, ``..`` gone) before anything is read,
    so the answer says nothing about what exists outside the roots: a caller cannot probe
    the server's files, nor register another tenant's uploaded manifest as its own.
    """
    key = source.strip()
    if key.lower() in DATASET_NAMES or (key and is_dataset_plugin(key)):
        return
    refused = ForbiddenError(
        f"{what} {source[:200]!r} is "
        + ("not a built-in dataset nor " if what == "source" else "not ")
        + "under a directory this service allows server paths from (LETHE_DATASET_ROOTS); "
        "upload the data with POST /datasets/upload"
    )
    try:
        path = Path(normalise_source(key))
    except DatasetError:
        raise refused from None
    if path.is_relative_to(upload_dir()):
        raise refused
    if not any(path.is_relative_to(root) for root in roots):
        raise refused


def counts(*, db: Session, dataset_ids: list[int]) -> dict[int, DatasetCounts]:
    """Samples, distinct subjects and erased samples of each dataset, in one query."""
    if not dataset_ids:
        return {}
    rows = db.execute(
        select(
            Sample.dataset_id,
            func.count(Sample.id),
            func.count(func.distinct(Sample.subject_id)),
            func.coalesce(func.sum(case((Sample.erased_at.is_not(None), 1), else_=0)), 0),
        )
        .where(Sample.dataset_id.in_(dataset_ids))
        .group_by(Sample.dataset_id)
    )
    out = {i: DatasetCounts() for i in dataset_ids}
    for dataset_id, n, subjects, erased in rows:
        out[dataset_id] = DatasetCounts(samples=int(n), subjects=int(subjects), erased=int(erased))
    return out


def dataset_spec(dataset: Dataset) -> DatasetSpec:
    """How unlearning_core loads this dataset row (the same split and subjects as registered)."""
    return DatasetSpec(
        spec=dataset.source,
        split_seed=dataset.split_seed,
        test_fraction=dataset.test_fraction,
        subject_size=dataset.subject_size,
        subject_map=((dataset.info or {}).get("subject_map") or {}).get("path"),
    )


def load(dataset: Dataset) -> LoadedDataset:
    return dataset_spec(dataset).load()


def register(
    *,
    db: Session,
    name: str,
    source: str,
    subject_size: int | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    actor: str | None = None,
    info: dict | None = None,
    tenant: str = DEFAULT_TENANT,
    roots: list[Path] | None = None,
    subject_map: str | None = None,
) -> Dataset:
    """Load ``source`` (a :class:`DatasetError` if unreadable), then store ``tenant``'s
    dataset row, one :class:`Sample` per training sample and a ``dataset.registered``
    audit event.

    ``roots``: where a server path may be (:func:`check_source_allowed`; the API passes
    ``LETHE_DATASET_ROOTS``); None for the operator's own code (seeding, uploads). Raises
    :class:`ConflictError` if ``tenant`` has a dataset ``name`` already. Commits.
    """
    if roots is not None:
        check_source_allowed(source, roots)
        if subject_map is not None:
            check_source_allowed(subject_map, roots, what="subject map")
    if subject_map is not None and subject_size is not None:
        raise DatasetError("give subject_size or subject_map, not both")
    if get(db=db, name=name, tenant=tenant) is not None:
        raise ConflictError(f"a dataset named {name!r} already exists")
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if subject_size is not None and not 1 <= subject_size <= MAX_SUBJECT_SIZE:
        raise DatasetError(f"subject_size must be 1 to {MAX_SUBJECT_SIZE}, got {subject_size}")
    if not 0 <= split_seed <= MAX_SEED:
        raise DatasetError(f"split_seed must be 0 to {MAX_SEED}, got {split_seed}")
    normalised = normalise_source(source)
    # The caller's spelling of the source, so an error names what they sent.
    subjects = None
    if subject_map is not None:
        subjects = read_subject_map(Path(normalise_source(subject_map)))
    loaded = _load(
        source.strip(), seed=split_seed, subject_size=subject_size, test_fraction=test_fraction,
        subject_map=subjects,
    )
    if len(normalised) > SOURCE_COLUMN_LENGTH:
        raise DatasetError(
            f"source path {normalised[:200]!r}... is {len(normalised)} characters long once made "
            f"absolute; at most {SOURCE_COLUMN_LENGTH} can be stored"
        )
    train = loaded.train
    dataset = Dataset(
        tenant=tenant,
        name=name,
        source=normalised,
        split_seed=split_seed,
        test_fraction=test_fraction,
        subject_size=subject_size,
        num_classes=loaded.num_classes,
        num_samples=len(train),
        info={
            "in_channels": loaded.in_channels,
            "image_size": list(loaded.image_size),
            "num_test": len(loaded.test),
            "class_names": list(loaded.class_names),
            "sample_ids_sha256": sample_ids_digest(train.sample_ids),
            **({"subject_map": {"path": str(subjects.path), "sha256": subjects.sha256}} if subjects else {}),
            **(info or {}),
        },
    )
    try:
        db.add(dataset)
        db.flush()
        labels = train.labels.tolist()
        rows = [
            {
                "dataset_id": dataset.id,
                "sample_id": sid,
                "position": i,
                "label": int(labels[i]),
                "subject_id": subject,
            }
            for i, (sid, subject) in enumerate(
                zip(train.sample_ids, train.subject_ids, strict=True)
            )
        ]
        db.execute(insert(Sample), rows)
        subjects = len({r["subject_id"] for r in rows if r["subject_id"] is not None})
        audit(
            db,
            "dataset.registered",
            actor=actor,
            tenant=tenant,
            payload={
                "dataset": name,
                "source": normalised,
                "num_samples": len(rows),
                "num_classes": loaded.num_classes,
                "subjects": subjects,
                "subject_size": subject_size,
                "split_seed": split_seed,
                "test_fraction": test_fraction,
            },
        )
        db.commit()
    except IntegrityError:
        db.rollback()
        raise ConflictError(f"a dataset named {name!r} already exists") from None
    except BaseException:
        db.rollback()
        raise
    return dataset


def register_upload(
    *,
    db: Session,
    name: str,
    fileobj: BinaryIO,
    subject_size: int | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    actor: str | None = None,
    filename: str | None = None,
    tenant: str = DEFAULT_TENANT,
    subject_map: BinaryIO | None = None,
    subject_map_filename: str | None = None,
) -> Dataset:
    """Keep an uploaded ``.npz`` manifest (and its subject map, if sent) in ``tenant``'s
    upload folder and register it.

    The file is written to a temporary name, validated by registering it, and only then
    kept under ``<name>-<sha256[:16]>.npz``; a manifest that fails leaves no file behind.
    """
    if get(db=db, name=name, tenant=tenant) is not None:
        raise ConflictError(f"a dataset named {name!r} already exists")
    folder = tenant_upload_dir(tenant)
    folder.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".npz", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := fileobj.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size == 0:
            raise DatasetError("the uploaded file is empty; send an .npz manifest")
        digest = h.hexdigest()
        final = folder / f"{name}-{digest[:16]}.npz"
        os.replace(tmp, final)
        map_path = _keep_subject_map(folder, name, subject_map, subject_map_filename)
        try:
            return register(
                subject_map=str(map_path) if map_path else None,
                db=db,
                name=name,
                source=str(final),
                subject_size=subject_size,
                split_seed=split_seed,
                test_fraction=test_fraction,
                actor=actor,
                info={"upload": {"filename": filename, "sha256": digest, "size": size}},
                tenant=tenant,
            )
        except BaseException:
            final.unlink(missing_ok=True)
            if map_path is not None:
                map_path.unlink(missing_ok=True)
            raise
    finally:
        tmp.unlink(missing_ok=True)


def _keep_subject_map(
    folder: Path, name: str, fileobj: BinaryIO | None, filename: str | None
) -> Path | None:
    """An uploaded subject map kept beside its manifest (``.parquet`` when its name says so,
    else ``.csv``); None when none was sent."""
    if fileobj is None:
        return None
    data = fileobj.read()
    if not data:
        raise DatasetError("the uploaded subject map is empty; send a CSV (sample_id,subject_id) or Parquet file")
    suffix = ".parquet" if (filename or "").lower().endswith((".parquet", ".pq")) else ".csv"
    path = folder / f"{name}-subjects-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    path.write_bytes(data)
    return path


def erased_ids(*, db: Session, dataset_id: int) -> set[str]:
    """Every tombstoned sample of the dataset (what a compaction must leave out)."""
    return set(
        db.scalars(
            select(Sample.sample_id).where(
                Sample.dataset_id == dataset_id, Sample.erased_at.is_not(None)
            )
        )
    )


def erased_among(*, db: Session, dataset_id: int, sample_ids: list[str]) -> dict[str, list[str]]:
    """Those of ``sample_ids`` that are tombstoned, by the request that erased them."""
    out: dict[str, list[str]] = {}
    for start in range(0, len(sample_ids), 5000):
        chunk = sample_ids[start : start + 5000]
        for sample_id, request_id in db.execute(
            select(Sample.sample_id, Sample.erased_by_request).where(
                Sample.dataset_id == dataset_id,
                Sample.sample_id.in_(chunk),
                Sample.erased_at.is_not(None),
            )
        ):
            out.setdefault(request_id or "", []).append(sample_id)
    return out


def tombstone(
    *, db: Session, store: BlobStore, samples: dict[int, set[str]], request_id: str
) -> int:
    """Mark ``samples`` (sample ids per dataset id) erased by ``request_id`` in the caller's
    transaction (the first erasure of a sample wins) and delete their raw blobs where Lethe
    stored them; returns how many samples were newly erased. The tombstone keeps them out
    of any later training."""
    now = utcnow()
    erased = 0
    for dataset_id, sample_ids in samples.items():
        ids = sorted(sample_ids)
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            for sample in db.scalars(
                select(Sample).where(
                    Sample.dataset_id == dataset_id,
                    Sample.sample_id.in_(chunk),
                    Sample.raw_blob_key.is_not(None),
                )
            ):
                store.delete(sample.raw_blob_key)  # idempotent; before commit, so never left behind
                sample.raw_blob_key = None
            result = db.execute(
                update(Sample)
                .where(
                    Sample.dataset_id == dataset_id,
                    Sample.sample_id.in_(chunk),
                    Sample.erased_at.is_(None),
                )
                .values(erased_at=now, erased_by_request=request_id)
                .execution_options(synchronize_session=False)
            )
            erased += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return erased


def record_upload_rewrite(
    *, dataset: Dataset, sha256: str, size: int, erased_samples: int, at: datetime
) -> dict[str, Any]:
    """Record in the caller's transaction that ``dataset``'s uploaded file was rewritten
    (the purge blanked erased samples): its new sha256 and size, what was received first,
    and how many samples it no longer holds. Returns the new ``info["upload"]``."""
    upload = dict((dataset.info or {}).get("upload") or {})
    upload.setdefault("received_sha256", upload.get("sha256"))
    upload.setdefault("received_size", upload.get("size"))
    upload.update(
        sha256=sha256,
        size=size,
        erased_samples=erased_samples,
        rewrites=int(upload.get("rewrites") or 0) + 1,
        rewritten_at=at.isoformat(),
    )
    dataset.info = {**(dataset.info or {}), "upload": upload}
    return upload
