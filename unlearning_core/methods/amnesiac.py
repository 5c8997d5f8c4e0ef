"""Amnesiac and layer-wise partial amnesiac unlearning: subtract recorded updates.

For the forget set, find every step whose batch held one of its samples, sum those steps'
stored (pruned) updates and subtract the sum from the current weights. Cost is the bytes
of the affected updates: only their blobs are read, streamed with a small read-ahead.
Steps already in the lineage's ledger are skipped, so no batch is subtracted twice.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from unlearning_core.data import Dataset
from unlearning_core.errors import RunError
from unlearning_core.metrics import split_positions
from unlearning_core.recording import PruneSchedule, decode_update
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.ledger import VersionEntry
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.training.loop import sgd_steps
from unlearning_core.weights import save_state

READ_AHEAD = 4


@dataclass
class AmnesiacResult:
    state: dict[str, torch.Tensor]
    parent_state: dict[str, torch.Tensor]
    version: VersionEntry | None  # None: a dry run computed a new state but stored nothing
    new_version: bool
    batches_subtracted: int
    batches_already_subtracted: int
    bytes_read: int
    unlearn_seconds: float
    recovery_seconds: float


def prune_shares(run: RecordedRun, *, partial: bool, prune_first: float | None, prune_last: float | None) -> dict[str, float] | None:
    """Per-tensor pruning to apply at unlearning time (``None``: use updates as stored)."""
    rec = run.spec.recording
    if rec.mode == "none":
        raise RunError(
            f"run {run.run_id!r} was trained without recording updates; "
            "amnesiac methods need `lethe train --record full` or `--record partial`"
        )
    if not partial:
        if rec.mode == "partial" or prune_first is not None or prune_last is not None:
            raise RunError(
                f"run {run.run_id!r} recorded {rec.mode} updates; full amnesiac needs --record full "
                "and takes no --prune-first/--prune-last (use partial-amnesiac)"
            )
        return None
    schedule = PruneSchedule(
        rec.prune_first if prune_first is None else prune_first,
        rec.prune_last if prune_last is None else prune_last,
    )
    names = list(run.spec.tensors)
    if rec.mode == "partial" and not schedule.covers(PruneSchedule(rec.prune_first, rec.prune_last), names):
        raise RunError(
            f"pruning {schedule.first}->{schedule.last} is lighter than the run's recorded "
            f"{rec.prune_first}->{rec.prune_last} on some layer; the pruned entries were never stored"
        )
    return schedule.tensor_shares(names)


def _fetch(run: RecordedRun, pointers: list[BlobPointer]) -> Iterator[bytes]:
    """Blobs in order, verified against the run's sha256s, read ahead on a thread pool."""
    with ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="lethe-reader") as pool:
        window: deque[Future[bytes]] = deque()
        for p in pointers:
            window.append(pool.submit(run.store.get, p.key, expected_sha256=p.sha256))
            if len(window) >= READ_AHEAD:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def amnesiac_unlearn(
    run: RecordedRun,
    forget_positions: np.ndarray,
    forget_ids: list[str],
    *,
    partial: bool,
    prune_first: float | None = None,
    prune_last: float | None = None,
    recovery_steps: int = 0,
    recovery_batch_size: int | None = None,
    dataset: Dataset | None = None,
    device: torch.device,
    progress: bool = False,
    publish: bool = True,
) -> AmnesiacResult:
    """Subtract the affected steps' updates from the lineage head and publish a version.

    With ``publish=False`` nothing is written (no weights, no ledger entry): a dry run
    that lets several methods be compared from the same head.
    """
    prune = prune_shares(run, partial=partial, prune_first=prune_first, prune_last=prune_last)
    method = "partial-amnesiac" if partial else "amnesiac"
    ledger = run.ledger()
    head = ledger.head
    parent_state = run.load_weights(head.weights)
    done = set(ledger.subtracted_steps)
    affected = run.index.steps_holding(forget_positions)
    todo = [int(s) for s in affected if int(s) not in done]
    fmt = run.update_format()
    blobs = run.update_blobs

    started = time.perf_counter()
    total = {name: torch.zeros(shape, dtype=torch.float32, device=device) for name, shape in fmt.shapes.items()}
    bytes_read = 0
    pointers = [blobs[s] for s in todo]
    with tqdm(total=len(todo), desc=method, disable=not progress, leave=False) as bar:
        for step, data in zip(todo, _fetch(run, pointers), strict=True):
            bytes_read += len(data)
            update = decode_update(
                data, fmt, epoch=int(run.index.epochs[step]), batch=int(run.index.batches[step]),
                prune=prune, device=device,
            )
            for name, delta in update.items():
                total[name] += delta
            bar.update(1)
    state = {k: v.clone() for k, v in parent_state.items()}
    for name, delta in total.items():
        state[name] = (state[name].to(device=device, dtype=torch.float32) - delta).to(
            dtype=parent_state[name].dtype, device="cpu"
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    unlearn_seconds = time.perf_counter() - started

    recovery_seconds = 0.0
    if recovery_steps > 0:
        if dataset is None:
            raise RunError("a recovery fine-tune needs the run's dataset")
        model = run.model_with(state)
        retain = dataset.train.subset(split_positions(len(dataset.train), forget_positions))
        recovery_seconds = sgd_steps(
            model, retain, steps=recovery_steps,
            batch_size=recovery_batch_size or run.spec.training.batch_size,
            optim=run.optim(), device=device, seed=run.spec.training.seed + len(ledger.versions),
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}

    changed = bool(todo) or recovery_steps > 0
    entry: VersionEntry | None = head if not changed else None
    if publish and changed:
        number = head.version + 1
        ref = save_state(run.store, f"{run.prefix}/weights/v{number:04d}.safetensors", state)
        entry = VersionEntry(
            version=number, weights=BlobPointer.of(ref), parent=head.version, method=method,
            forget_samples=len(forget_positions), batches_subtracted=len(todo),
            recovery_steps=recovery_steps,
        )
        ledger.versions.append(entry)
        ledger.subtracted_steps = sorted(done | set(todo))
    new_ids = set(forget_ids) - set(ledger.erased_sample_ids)
    if publish and (changed or new_ids):
        ledger.erased_sample_ids = sorted(set(ledger.erased_sample_ids) | new_ids)
        run.save_ledger(ledger)
    return AmnesiacResult(
        state=state, parent_state=parent_state, version=entry, new_version=changed and publish,
        batches_subtracted=len(todo), batches_already_subtracted=len(affected) - len(todo),
        bytes_read=bytes_read, unlearn_seconds=unlearn_seconds, recovery_seconds=recovery_seconds,
    )
