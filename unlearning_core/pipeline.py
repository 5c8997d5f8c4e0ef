"""The train / unlearn workflows behind ``lethe train`` and ``lethe unlearn``.

Kept out of the CLI so the worker can run exactly the same code for a request, and so the
results are plain dicts with DESIGN.md's metric names, ready for JSON.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearning_core.data import load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.metrics import accuracy, collect_outputs, evaluate_unlearning
from unlearning_core.methods.amnesiac import amnesiac_unlearn
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import BlobStore
from unlearning_core.errors import MethodError

AMNESIAC_METHODS = ("amnesiac", "partial-amnesiac")


def train(
    store: BlobStore,
    *,
    run_id: str,
    dataset: DatasetSpec,
    model: str,
    training: TrainingSpec,
    recording: RecordingSpec,
    device: torch.device,
    progress: bool = False,
    evaluate: bool = True,
) -> dict[str, Any]:
    data = load_dataset(
        dataset.spec, seed=dataset.split_seed, subject_size=dataset.subject_size,
        test_fraction=dataset.test_fraction,
    )
    run = train_run(
        store, run_id=run_id, dataset=data, dataset_spec=dataset, model_name=model,
        training=training, recording=recording, device=device, progress=progress,
    )
    res = run.spec.results
    out: dict[str, Any] = {
        "run_id": run_id,
        "store": store.url,
        "model": model,
        "dataset": dataset.spec,
        "record": recording.mode,
        "steps": res.steps,
        "train_seconds": res.train_seconds,
        "record_stall_seconds": res.stall_seconds,
        "storage_bytes": res.storage_bytes,
        "weights": f"{store.url}/{run.spec.trained_weights.key}",
        "device": res.device,
    }
    if evaluate:
        net = run.model_with(run.load_weights(run.spec.trained_weights))
        out["test_acc"] = accuracy(collect_outputs(net, data.test, device=device))
        out["train_acc"] = accuracy(collect_outputs(net, data.train, device=device))
    return out


def unlearn(
    store: BlobStore,
    *,
    run_id: str,
    method: str,
    forget: ForgetSpec,
    prune_first: float | None = None,
    prune_last: float | None = None,
    recovery_steps: int = 0,
    device: torch.device,
    progress: bool = False,
    evaluate: bool = True,
    publish: bool = True,
) -> dict[str, Any]:
    if method not in AMNESIAC_METHODS:
        raise MethodError(f"unknown unlearning method {method!r}; known: {', '.join(AMNESIAC_METHODS)}")
    run = RecordedRun.open(store, run_id)
    table = run.sample_table
    positions = forget.resolve(table["sample_ids"], table["labels"], table["subject_ids"])
    forget_ids = [table["sample_ids"][i] for i in positions]
    needs_data = evaluate or recovery_steps > 0
    dataset = run.dataset() if needs_data else None
    result = amnesiac_unlearn(
        run, positions, forget_ids, partial=method == "partial-amnesiac",
        prune_first=prune_first, prune_last=prune_last, recovery_steps=recovery_steps,
        dataset=dataset, device=device, progress=progress, publish=publish,
    )
    version = result.version
    out: dict[str, Any] = {
        "run_id": run_id,
        "method": method,
        "forget": forget.describe(),
        "forget_samples": int(len(positions)),
        "version": version.version if version else None,
        "new_version": result.new_version,
        "batches_subtracted": result.batches_subtracted,
        "batches_already_subtracted": result.batches_already_subtracted,
        "bytes_read": result.bytes_read,
        "unlearn_seconds": result.unlearn_seconds,
        "recovery_seconds": result.recovery_seconds,
        "storage_bytes": run.spec.results.storage_bytes,
        "weights": f"{store.url}/{version.weights.key}" if version else None,
        "weights_sha256": version.weights.sha256 if version else None,
    }
    if evaluate and dataset is not None:
        original_state = run.load_weights(run.spec.trained_weights)
        original = run.model_with(original_state)
        original_forget_acc = accuracy(
            collect_outputs(original, dataset.train.subset(positions), device=device)
        )
        out["original_forget_acc"] = original_forget_acc
        out.update(
            evaluate_unlearning(
                run.model_with(result.state), dataset, positions, device=device,
                original_state=original_state, original_forget_acc=original_forget_acc,
                relearn=run.optim(), relearn_batch_size=run.spec.training.batch_size,
                seed=run.spec.training.seed,
            )
        )
    return out
