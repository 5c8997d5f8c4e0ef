"""A dataset attached to a run that names none (recorded from the user's own loop).

``record_training`` knows the sample ids, not where the data lives. When the run is
imported into the service against a registered dataset, the service attaches that
dataset's :class:`~unlearning_core.runs.spec.DatasetSpec` beside the run
(``runs/<run_id>/dataset.json``; ``run.json`` stays as recorded) so the run can be evaluated
(test split, forget and retain accuracy) and retrained by a compaction. The run's sample
table keeps its own order: :func:`attached_dataset` returns the dataset's training samples
in that order.
"""

from __future__ import annotations

from unlearning_core.data import Dataset
from unlearning_core.errors import BlobNotFoundError, RunError
from unlearning_core.runs.spec import DatasetSpec
from unlearning_core.store import BlobRef, BlobStore

ATTACHMENT = "dataset.json"


def attachment_key(run_id: str) -> str:
    return f"runs/{run_id}/{ATTACHMENT}"


def attach_dataset(store: BlobStore, run_id: str, spec: DatasetSpec) -> BlobRef:
    """Write (or rewrite) the dataset attached to ``run_id``; its reference."""
    return store.put_json(attachment_key(run_id), spec.model_dump(mode="json"))


def read_attachment(store: BlobStore, run_id: str) -> DatasetSpec | None:
    try:
        raw = store.get_json(attachment_key(run_id))
    except BlobNotFoundError:
        return None
    return DatasetSpec.model_validate(raw)


def attached_dataset(
    spec: DatasetSpec, run_id: str, sample_ids: list[str], labels: list[int] | None = None
) -> Dataset:
    """The attached dataset with its training samples in the run's order (``sample_ids``,
    the run's sample table); a :class:`RunError` if the dataset lacks any of them or labels
    one differently from ``labels`` (the run's, where it knows them: -1 is unknown)."""
    data = spec.load()
    position = {sid: i for i, sid in enumerate(data.train.sample_ids)}
    missing = [s for s in sample_ids if s not in position]
    if missing:
        raise RunError(
            f"run {run_id!r}: {len(missing)} of its samples are not in the attached dataset {spec.spec!r}, "
            f"e.g. {missing[0]!r}"
        )
    train = data.train.subset([position[s] for s in sample_ids])
    if labels:
        known = train.labels.tolist()
        wrong = [i for i, y in enumerate(labels) if y >= 0 and known[i] != y]
        if wrong:
            raise RunError(
                f"the dataset {spec.spec!r} attached to run {run_id!r} labels {len(wrong)} of its samples "
                f"differently from the run, e.g. {sample_ids[wrong[0]]!r}"
            )
    return Dataset(data.name, train, data.test, data.num_classes, data.class_names)
