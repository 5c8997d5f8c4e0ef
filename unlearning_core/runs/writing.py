"""The steps every kind of training run shares when it is written to the store."""

from __future__ import annotations

import json

from unlearning_core.data import SampleSet
from unlearning_core.errors import RunError
from unlearning_core.runs.artifact import RecordedRun, run_prefix
from unlearning_core.runs.ledger import Ledger, VersionEntry
from unlearning_core.runs.marker import marker_key
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.store import BlobRef, BlobStore
from unlearning_core.vocab import COMPACT_METHOD, TRAIN_METHOD


def ensure_new_run(store: BlobStore, run_id: str) -> str:
    """The run's key prefix; an existing ``run_id`` is an error, never an overwrite (nor is
    the id of a recording that is still running or crashed: its blobs are in the store)."""
    prefix = run_prefix(run_id)
    if store.exists(f"{prefix}/run.json"):
        raise RunError(f"run {run_id!r} already exists in {store.url}; runs are immutable")
    if store.exists(marker_key(prefix)):
        raise RunError(
            f"run {run_id!r} was already recorded into {store.url} (incomplete or still running); "
            "choose another run id"
        )
    return prefix


def put_samples(store: BlobStore, prefix: str, train: SampleSet) -> BlobRef:
    """The training set's ids, subjects and labels, in the positions the run refers to."""
    table = {
        "sample_ids": list(train.sample_ids),
        "subject_ids": list(train.subject_ids),
        "labels": train.labels.tolist(),
    }
    return store.put(f"{prefix}/samples.json", json.dumps(table).encode())


def publish_run(run: RecordedRun, checkpoints: dict[str, list[BlobPointer]] | None = None) -> RecordedRun:
    """Start the lineage at version 0 (a compaction: at its origin's next number), then
    write run.json last: its presence is what makes the run visible, so a crash while
    training leaves no half-written run behind."""
    origin = run.spec.origin
    first = (
        VersionEntry(version=0, weights=run.spec.trained_weights, parent=None, method=TRAIN_METHOD)
        if origin is None
        else VersionEntry(
            version=origin.first_version, weights=run.spec.trained_weights,
            parent=origin.version, method=COMPACT_METHOD,
        )
    )
    run.save_ledger(Ledger(versions=[first], checkpoints=checkpoints))
    run.store.put_json(f"{run.prefix}/run.json", run.spec.model_dump(mode="json"))
    return run
