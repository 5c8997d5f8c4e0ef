"""Train a SISA run and store it: placement, per-slice checkpoints, ensemble, ledger.

Training is split in two steps so that shards can be trained by different workers:

- :func:`train_sisa_shard` trains one shard over its slices and stores its checkpoints,
  then, last, a marker ``runs/<id>/shards/s<NNN>/done.json`` listing them (with the
  shard's step counts, seconds and the worker that trained it). It is idempotent: a shard
  whose marker exists is not trained again.
- :func:`finish_sisa_run` reads every shard's marker and writes the ensemble weights, the
  placement, the sample table and ``run.json`` (last). Everything it writes is a function
  of the markers' checkpoints and the run's configuration, so two workers finishing the
  same run at once write the same bytes.

:func:`train_sisa_run` does both in one process, shard after shard.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from unlearning_core.data import Dataset
from unlearning_core.errors import RunError
from unlearning_core.models import create_model
from unlearning_core.recording import float_state
from unlearning_core.runs.artifact import run_prefix
from unlearning_core.runs.spec import (
    BlobPointer,
    DatasetSpec,
    RecordingSpec,
    RunResults,
    RunSpec,
    SisaSpec,
    TrainingSpec,
)
from unlearning_core.runs.writing import ensure_new_run, publish_run, put_samples
from unlearning_core.sisa.artifact import (
    SisaRun,
    assignment_to_bytes,
    checkpoint_key,
    ensemble_state,
)
from unlearning_core.sisa.assignment import Assignment, assign
from unlearning_core.sisa.ensemble import AGGREGATIONS
from unlearning_core.sisa.train import initial_state, train_shard
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import OptimConfig
from unlearning_core.weights import load_state, save_state


def _check(training: TrainingSpec, sisa: SisaSpec) -> None:
    if sisa.aggregation not in AGGREGATIONS:
        raise RunError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {sisa.aggregation!r}")
    if training.concentrate_class is not None or training.concentrate_subjects:
        raise RunError("--concentrate applies to single-model training, not SISA")


def _model_factory(model_name: str, dataset: Dataset) -> Callable[[], torch.nn.Module]:
    def new_model() -> torch.nn.Module:
        return create_model(
            model_name, in_channels=dataset.in_channels, image_size=dataset.image_size,
            num_classes=dataset.num_classes,
        )

    return new_model


def _assignment(dataset: Dataset, training: TrainingSpec, sisa: SisaSpec) -> Assignment:
    train = dataset.train
    return assign(
        train.sample_ids, train.subject_ids, shards=sisa.shards, slices=sisa.slices,
        seed=training.seed, by_subject=sisa.by_subject,
    )


def shard_marker_key(run_id: str, shard: int) -> str:
    """The marker a trained shard leaves (written after its checkpoints)."""
    return f"{run_prefix(run_id)}/shards/s{shard:03d}/done.json"


def shard_marker(store: BlobStore, run_id: str, shard: int) -> dict | None:
    """The shard's marker (``checkpoints``, ``steps``, ``samples_processed``, ``seconds``,
    ``worker``), or None while the shard is not trained."""
    key = shard_marker_key(run_id, shard)
    return store.get_json(key) if store.exists(key) else None


def missing_shards(store: BlobStore, run_id: str, shards: int) -> list[int]:
    """Shards of the run without a marker yet."""
    return [s for s in range(shards) if not store.exists(shard_marker_key(run_id, s))]


def train_sisa_shard(
    store: BlobStore,
    *,
    run_id: str,
    dataset: Dataset,
    model_name: str,
    training: TrainingSpec,
    sisa: SisaSpec,
    shard: int,
    device: torch.device,
    worker: str | None = None,
    assignment: Assignment | None = None,
) -> list[BlobPointer]:
    """Train ``shard`` over its slices and store its version-0 checkpoints and marker; the
    checkpoints' pointers. Idempotent: a shard already marked done is not trained again."""
    if not 0 <= shard < sisa.shards:
        raise RunError(f"shard {shard} out of range (the run has {sisa.shards})")
    _check(training, sisa)
    done = shard_marker(store, run_id, shard)
    if done is not None:
        return [BlobPointer.model_validate(p) for p in done["checkpoints"]]
    prefix = run_prefix(run_id)
    if assignment is None:
        assignment = _assignment(dataset, training, sisa)
    new_model = _model_factory(model_name, dataset)
    optim = OptimConfig(lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    started = time.perf_counter()
    result = train_shard(
        new_model, dataset.train, assignment, shard=shard, slices=sisa.slices, start_slice=0,
        start_state=initial_state(new_model, training.seed, shard), exclude=np.empty(0, dtype=np.int64),
        epochs=training.epochs, batch_size=training.batch_size, optim=optim, seed=training.seed, device=device,
    )
    pointers = [
        BlobPointer.of(save_state(store, checkpoint_key(prefix, shard, 0, r), state))
        for r, state in enumerate(result.checkpoints)
    ]
    store.put_json(
        shard_marker_key(run_id, shard),
        {
            "shard": shard,
            "checkpoints": [p.model_dump(mode="json") for p in pointers],
            "steps": result.steps,
            "samples_processed": result.samples_processed,
            "seconds": time.perf_counter() - started,
            "device": str(device),
            "worker": worker or f"{socket.gethostname()}:{os.getpid()}",
        },
    )
    return pointers


def finish_sisa_run(
    store: BlobStore,
    *,
    run_id: str,
    dataset: Dataset,
    dataset_spec: DatasetSpec,
    model_name: str,
    training: TrainingSpec,
    sisa: SisaSpec,
    device_name: str,
    seconds: float | None = None,
    assignment: Assignment | None = None,
) -> SisaRun:
    """Assemble a run whose shards are all trained (markers present) and store it, run.json
    last. ``seconds`` defaults to the shards' training seconds added up. Raises RunError
    naming the shards not trained yet."""
    _check(training, sisa)
    prefix = run_prefix(run_id)
    markers = [shard_marker(store, run_id, s) for s in range(sisa.shards)]
    missing = [s for s, m in enumerate(markers) if m is None]
    if missing:
        raise RunError(f"SISA run {run_id!r}: shards {', '.join(map(str, missing))} are not trained yet")
    if assignment is None:
        assignment = _assignment(dataset, training, sisa)
    new_model = _model_factory(model_name, dataset)
    initial, final, checkpoints = [], [], {}
    processed = steps = storage = 0
    for shard, marker in enumerate(markers):
        assert marker is not None
        pointers = [BlobPointer.model_validate(p) for p in marker["checkpoints"]]
        checkpoints[str(shard)] = pointers
        storage += sum(p.size for p in pointers)
        processed += int(marker["samples_processed"])
        steps += int(marker["steps"])
        initial.append(initial_state(new_model, training.seed, shard))
        final.append(load_state(store, pointers[-1].ref()))
    if seconds is None:
        seconds = float(sum(float(m["seconds"]) for m in markers if m is not None))

    initial_ref = save_state(store, f"{prefix}/weights/initial.safetensors", ensemble_state(initial))
    trained_ref = save_state(store, f"{prefix}/weights/v0000.safetensors", ensemble_state(final))
    index = store.put(f"{prefix}/index.safetensors", assignment_to_bytes(assignment))
    samples = put_samples(store, prefix, dataset.train)
    updates = store.put(f"{prefix}/updates.json", b"[]")
    probe = new_model()
    spec = RunSpec(
        method="sisa",
        run_id=run_id,
        model=model_name,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
        dataset=dataset_spec,
        training=training,
        recording=RecordingSpec(mode="none"),
        sisa=sisa,
        tensors={k: list(v.shape) for k, v in float_state(probe).items()},
        results=RunResults(
            steps=steps, samples_processed=processed, train_seconds=seconds, stall_seconds=0.0, storage_bytes=storage,
            device=device_name,
        ),
        initial_weights=BlobPointer.of(initial_ref),
        trained_weights=BlobPointer.of(trained_ref),
        samples=BlobPointer.of(samples),
        index=BlobPointer.of(index),
        updates=BlobPointer.of(updates),
    )
    return publish_run(SisaRun(store, spec), checkpoints)


def train_sisa_run(
    store: BlobStore,
    *,
    run_id: str,
    dataset: Dataset,
    dataset_spec: DatasetSpec,
    model_name: str,
    training: TrainingSpec,
    sisa: SisaSpec,
    device: torch.device,
    progress: bool = False,
) -> SisaRun:
    """Train every shard over its slices (``training.epochs`` per stage) and store the run.

    Shards a previous attempt already trained (marker present) are not trained again."""
    ensure_new_run(store, run_id)
    _check(training, sisa)
    assignment = _assignment(dataset, training, sisa)
    started = time.perf_counter()
    for shard in tqdm(range(sisa.shards), desc=f"sisa {run_id}", disable=not progress, leave=False):
        train_sisa_shard(
            store, run_id=run_id, dataset=dataset, model_name=model_name, training=training, sisa=sisa,
            shard=shard, device=device, assignment=assignment,
        )
    return finish_sisa_run(
        store, run_id=run_id, dataset=dataset, dataset_spec=dataset_spec, model_name=model_name,
        training=training, sisa=sisa, device_name=str(device), seconds=time.perf_counter() - started,
        assignment=assignment,
    )
