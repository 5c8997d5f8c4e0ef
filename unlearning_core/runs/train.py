"""Train a model and store it as a run: weights, index, (pruned) updates, ledger."""

from __future__ import annotations

import json

import torch

from unlearning_core.data import Dataset
from unlearning_core.models import create_model
from unlearning_core.recording import UpdateRecorder, budget, float_state, store_fixed_masks
from unlearning_core.report.timeline import TimelineProbe, auto_every, training_observer
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.index import StepIndex
from unlearning_core.runs.spec import (
    RECORDING_FORMAT,
    BlobPointer,
    DatasetSpec,
    LineageOrigin,
    RecordingSpec,
    RunResults,
    RunSpec,
    TrainingSpec,
)
from unlearning_core.runs.writing import ensure_new_run, publish_run, put_samples
from unlearning_core.store import BlobStore
from unlearning_core.training.batching import concentration_of, plan_batches
from unlearning_core.training.loop import OptimConfig, train_plan
from unlearning_core.vocab import METHOD_OF_RECORD
from unlearning_core.weights import save_state


def fit_budget(recording: RecordingSpec, shapes: dict[str, tuple[int, ...]], epoch_batches: list[int]) -> RecordingSpec:
    """``recording.budget["max_bytes"]`` (``--max-storage``): the recording that fits it
    (:func:`unlearning_core.recording.budget.fit`), with the estimate and what was given up
    recorded in ``budget``; a :class:`RunError` with the estimate, before any training, when
    nothing fits. Without a budget, unchanged."""
    if not recording.budget or recording.mode == "none" or "max_bytes" not in recording.budget:
        return recording
    chosen = budget.fit(
        int(recording.budget["max_bytes"]), shapes, mode=recording.mode, mask=recording.mask,
        schedule=recording.schedule if recording.mode == "partial" else None, dtype=recording.dtype,
        group_steps=recording.group_steps, epoch_batches=epoch_batches, seed=recording.mask_seed,
    )
    return recording.model_copy(update={
        "dtype": chosen.dtype, "group_steps": chosen.group_steps,
        "budget": {"max_bytes": int(recording.budget["max_bytes"]), "estimated_bytes": chosen.estimate.total,
                   "bytes_per_recorded_step": chosen.estimate.bytes_per_step,
                   "recorded_steps": chosen.estimate.recorded_steps, "changed": list(chosen.changed)},
    })


def train_run(
    store: BlobStore,
    *,
    run_id: str,
    dataset: Dataset,
    dataset_spec: DatasetSpec,
    model_name: str,
    training: TrainingSpec,
    recording: RecordingSpec,
    device: torch.device,
    progress: bool = False,
    origin: LineageOrigin | None = None,
) -> RecordedRun:
    """Train ``model_name`` on ``dataset.train`` and store everything unlearning needs.

    Runs are immutable: an existing ``run_id`` is an error, never an overwrite.
    """
    prefix = ensure_new_run(store, run_id)
    # Checked before anything is written: a refused run leaves no debris in the store.
    concentrate = concentration_of(
        dataset.train.labels.numpy(), list(dataset.train.subject_ids),
        klass=training.concentrate_class, subjects=training.concentrate_subjects,
        share=training.concentrate_share,
    )
    torch.manual_seed(training.seed)
    model = create_model(
        model_name,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
        num_classes=dataset.num_classes,
    )
    plan = plan_batches(
        len(dataset.train), epochs=training.epochs, batch_size=training.batch_size,
        seed=training.seed, concentrate=concentrate,
    )
    recorder = None
    # Written by this code: the current layout; a fixed-mask run gets its own mask index
    # (a compaction passes the replaced run's spec, whose index is not this run's).
    recording = recording.model_copy(update={"format": RECORDING_FORMAT, "mask_index": None})
    # a budget nothing fits is refused here, before anything is written
    recording = fit_budget(recording, {k: tuple(v.shape) for k, v in float_state(model).items()},
                           [len(e) for e in plan])
    initial = save_state(store, f"{prefix}/weights/initial.safetensors", model.state_dict())
    if recording.mode != "none":
        fmt = recording.update_format({k: tuple(v.shape) for k, v in float_state(model).items()})
        fmt, mask_ref = store_fixed_masks(fmt, store, prefix)
        if mask_ref is not None:
            recording = recording.model_copy(update={"mask_index": BlobPointer.of(mask_ref)})
        recorder = UpdateRecorder(model, fmt=fmt, store=store, prefix=prefix, group_steps=recording.group_steps,
                                  epoch_batches=[len(e) for e in plan])
    optim = OptimConfig(lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    total_steps = sum(len(e) for e in plan)
    observe, timeline = None, None
    every = auto_every(total_steps) if training.timeline_every is None else training.timeline_every
    if every > 0 and len(dataset.test) > 0:
        probe = TimelineProbe(dataset.test, dataset.num_classes, device=device, seed=training.seed)
        observe, timeline = training_observer(probe, every, total_steps)
    seconds = train_plan(
        model, dataset.train, plan, optim=optim, device=device, recorder=recorder,
        progress=progress, desc=f"train {run_id}", observe=observe,
    )
    stats = recorder.close() if recorder is not None else None

    trained = save_state(store, f"{prefix}/weights/v0000.safetensors", model.state_dict())
    grouped = recording.group_steps if recording.mode != "none" else 1
    index = store.put(f"{prefix}/index.safetensors", StepIndex.from_plan(plan, group_steps=grouped).to_bytes())
    samples = put_samples(store, prefix, dataset.train)
    blobs = [BlobPointer.of(b.ref).model_dump() for b in stats.blobs] if stats else []
    updates = store.put(f"{prefix}/updates.json", json.dumps(blobs).encode())
    timeline_ref = (
        store.put_json(f"{prefix}/timeline/train.json", timeline.model_dump(mode="json"))
        if timeline is not None
        else None
    )
    spec = RunSpec(
        method=METHOD_OF_RECORD[recording.mode],
        run_id=run_id,
        model=model_name,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
        dataset=dataset_spec,
        training=training,
        recording=recording,
        tensors={k: list(v.shape) for k, v in float_state(model).items()},
        results=RunResults(
            steps=total_steps,
            train_seconds=seconds,
            stall_seconds=stats.stall_seconds if stats else 0.0,
            backpressure_seconds=stats.backpressure_seconds if stats else 0.0,
            storage_bytes=stats.storage_bytes if stats else 0,
            device=str(device),
        ),
        initial_weights=BlobPointer.of(initial),
        trained_weights=BlobPointer.of(trained),
        samples=BlobPointer.of(samples),
        index=BlobPointer.of(index),
        updates=BlobPointer.of(updates),
        timeline=BlobPointer.of(timeline_ref) if timeline_ref is not None else None,
        origin=origin,
    )
    return publish_run(RecordedRun(store, spec))
