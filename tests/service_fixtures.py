"""Test helpers that put stored runs into the service database the way training would."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from api.database.core import utcnow
from api.datasets.models import Dataset, Sample
from api.registry.models import Model, ModelVersion, TrainingRun
from unlearning_core.data import load_dataset
from unlearning_core.runs.spec import RunSpec
from unlearning_core.store import BlobStore

#: Recorded digits runs shared by the worker and compaction tests (the ``recorded_runs``
#: fixture of conftest.py trains them once per session).
RUNS = {
    # run id: (architecture, recording, training method, epochs, batch size)
    "celery-small": ("mlp", "partial", "partial-amnesiac", 2, 32),
    # many small batches, every one recorded in full: on the S3 server the subtraction
    # takes seconds, long enough to kill the worker in the middle of it
    "celery-big": ("mlp", "full", "amnesiac", 8, 16),
}


def insert_trained_model(
    db: Session, *, store: BlobStore, dataset_id: int, name: str, run_id: str, architecture: str, method: str,
    tenant: str = "acme",
) -> Model:
    """A trained model of ``tenant`` (the ``api_keys`` fixture's) as training through the API
    leaves it: model, run with ledger, v0."""
    spec = RunSpec.model_validate(store.get_json(f"runs/{run_id}/run.json"))
    model = Model(
        tenant=tenant,
        name=name, dataset_id=dataset_id, architecture=architecture, method=method,
        unlearn_method=method, status="ready",
    )
    db.add(model)
    db.flush()
    db.add(
        TrainingRun(
            model_id=model.id, run_id=run_id, store_url=store.url, method=method, config={},
            status="completed", ledger=store.get_json(f"runs/{run_id}/ledger.json"), finished_at=utcnow(),
        )
    )
    w = spec.trained_weights
    db.add(
        ModelVersion(
            model_id=model.id, number=0, parent_number=None, method="train", weights_key=w.key,
            weights_sha256=w.sha256, weights_size=w.size, metrics={},
        )
    )
    return model


def insert_digits_dataset(
    db: Session, tenant: str = "acme", name: str = "digits-subjects", subject_size: int = 10
) -> Dataset:
    """``tenant``'s digits dataset with subjects of ``subject_size``, as ``POST /datasets``
    leaves it (flushed)."""
    data = load_dataset("digits", subject_size=subject_size)
    train = data.train
    dataset = Dataset(
        tenant=tenant,
        name=name, source="digits", split_seed=0, test_fraction=0.2, subject_size=subject_size,
        num_classes=data.num_classes, num_samples=len(train), info={},
    )
    db.add(dataset)
    db.flush()
    labels = train.labels.tolist()
    db.execute(
        insert(Sample),
        [
            {"dataset_id": dataset.id, "sample_id": sid, "position": i, "label": int(labels[i]), "subject_id": subject}
            for i, (sid, subject) in enumerate(zip(train.sample_ids, train.subject_ids, strict=True))
        ],
    )
    return dataset
