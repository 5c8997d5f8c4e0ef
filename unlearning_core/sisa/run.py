"""Train a SISA run and store it: placement, per-slice checkpoints, ensemble, ledger."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from unlearning_core.data import Dataset
from unlearning_core.errors import RunError
from unlearning_core.models import create_model
from unlearning_core.recording import float_state
from unlearning_core.runs.writing import ensure_new_run, publish_run, put_samples
from unlearning_core.runs.spec import (
    BlobPointer,
    DatasetSpec,
    RecordingSpec,
    RunResults,
    RunSpec,
    SisaSpec,
    TrainingSpec,
)
from unlearning_core.sisa.artifact import SisaRun, assignment_to_bytes, checkpoint_key, ensemble_state
from unlearning_core.sisa.assignment import assign
from unlearning_core.sisa.ensemble import AGGREGATIONS
from unlearning_core.sisa.train import initial_state, train_shard
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import OptimConfig
from unlearning_core.weights import save_state


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
    """Train every shard over its slices (``training.epochs`` per stage) and store the run."""
    prefix = ensure_new_run(store, run_id)
    if sisa.aggregation not in AGGREGATIONS:
        raise RunError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {sisa.aggregation!r}")
    if training.concentrate_class is not None:
        raise RunError("--concentrate applies to single-model training, not SISA")

    def new_model() -> torch.nn.Module:
        return create_model(
            model_name, in_channels=dataset.in_channels, image_size=dataset.image_size,
            num_classes=dataset.num_classes,
        )

    train = dataset.train
    assignment = assign(
        train.sample_ids, train.subject_ids, shards=sisa.shards, slices=sisa.slices,
        seed=training.seed, by_subject=sisa.by_subject,
    )
    optim = OptimConfig(lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    started = time.perf_counter()
    initial, final, checkpoints, processed, steps, storage = [], [], {}, 0, 0, 0
    for shard in tqdm(range(sisa.shards), desc=f"sisa {run_id}", disable=not progress, leave=False):
        start = initial_state(new_model, training.seed, shard)
        result = train_shard(
            new_model, train, assignment, shard=shard, slices=sisa.slices, start_slice=0,
            start_state=start, exclude=np.empty(0, dtype=np.int64), epochs=training.epochs,
            batch_size=training.batch_size, optim=optim, seed=training.seed, device=device,
        )
        refs = [
            save_state(store, checkpoint_key(prefix, shard, 0, r), state)
            for r, state in enumerate(result.checkpoints)
        ]
        storage += sum(r.size for r in refs)
        checkpoints[str(shard)] = [BlobPointer.of(r) for r in refs]
        initial.append(start)
        final.append(result.checkpoints[-1])
        processed += result.samples_processed
        steps += result.steps
    seconds = time.perf_counter() - started

    initial_ref = save_state(store, f"{prefix}/weights/initial.safetensors", ensemble_state(initial))
    trained_ref = save_state(store, f"{prefix}/weights/v0000.safetensors", ensemble_state(final))
    index = store.put(f"{prefix}/index.safetensors", assignment_to_bytes(assignment))
    samples = put_samples(store, prefix, train)
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
            device=str(device),
        ),
        initial_weights=BlobPointer.of(initial_ref),
        trained_weights=BlobPointer.of(trained_ref),
        samples=BlobPointer.of(samples),
        index=BlobPointer.of(index),
        updates=BlobPointer.of(updates),
    )
    return publish_run(SisaRun(store, spec), checkpoints)
