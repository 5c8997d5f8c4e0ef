"""Records each optimizer step's parameter update while training runs.

Delta_{e,b} = state after the step - state before it, over every float tensor of the
state dict: parameters *and* float buffers such as BatchNorm running statistics (those
change in the forward pass, so the "before" snapshot is taken before the forward).
Subtracting the recorded deltas is then complete: all of them together give back the
initial state.

The training thread only takes the difference and hands it on. On a GPU it also launches
the fixed mask's gather (fewer bytes to copy) and a non-blocking copy into pinned host
memory, marked by a CUDA event; it never waits for either. Everything else happens on a
small pool of writer threads: waiting for the copy, masking with random or magnitude masks,
packing, serialising, hashing and writing. At most ``max_pending`` steps are in flight (a
bounded queue): when the writers fall behind, the training thread waits for a free slot,
and that wait is measured apart as ``backpressure_seconds``; ``stall_seconds`` is all the
time the training thread spent in the recorder, back-pressure included.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from unlearning_core.recording.codec import UpdateFormat, encode_update, pack_blob, serialize, with_fixed_masks
from unlearning_core.store import BlobRef, BlobStore

#: Where a partial run with fixed masks keeps them, under its prefix.
MASK_INDEX = "mask.safetensors"


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The float tensors of the state dict, the part of the model an update can change."""
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def update_key(prefix: str, epoch: int, batch: int) -> str:
    return f"{prefix}/updates/e{epoch:03d}-b{batch:05d}.safetensors"


def store_fixed_masks(fmt: UpdateFormat, store: BlobStore, prefix: str) -> tuple[UpdateFormat, BlobRef | None]:
    """For a partial run with fixed masks: generate them from the seed, store them once
    (``<prefix>/mask.safetensors``) and return the format that encodes with them and the
    blob (its sha256 goes into ``run.json``). Other formats come back unchanged, with None."""
    if not fmt.packed:
        return fmt, None
    fmt = with_fixed_masks(fmt)
    assert fmt.fixed is not None
    return fmt, store.put(f"{prefix}/{MASK_INDEX}", fmt.fixed.to_bytes())


@dataclass
class StepBlob:
    step: int
    epoch: int
    batch: int
    ref: BlobRef


@dataclass
class RecorderStats:
    blobs: list[StepBlob] = field(default_factory=list)
    stall_seconds: float = 0.0  # the training thread inside the recorder, all in all
    backpressure_seconds: float = 0.0  # of which: waiting for a writer slot (queue full)
    encode_seconds: float = 0.0  # writer threads: masking and packing (summed over threads)
    write_seconds: float = 0.0  # writer threads: serialising, hashing and writing

    @property
    def storage_bytes(self) -> int:
        return sum(b.ref.size for b in self.blobs)


class UpdateRecorder:
    """Snapshot before a step, diff after it, hand the encoded update to background writers."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        fmt: UpdateFormat,
        store: BlobStore,
        prefix: str,
        writers: int = 2,
        max_pending: int = 16,
        group_steps: int = 1,
        epoch_batches: list[int] | None = None,
    ) -> None:
        """``group_steps`` K > 1: one recorded step per K optimizer steps of an epoch (the last
        group of an epoch may be shorter; ``epoch_batches`` gives each epoch's batch count),
        holding their summed update; it is keyed by the epoch and the group's number."""
        if group_steps > 1 and epoch_batches is None:
            raise ValueError("grouping steps needs each epoch's number of batches")
        self._group = group_steps
        self._epoch_batches = epoch_batches
        self._groups = 0
        self._model = model
        self._fmt = fmt
        self._store = store
        self._prefix = prefix
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="lethe-writer")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: list[Future[StepBlob]] = []
        self._before: dict[str, torch.Tensor] | None = None
        self._stats_lock = threading.Lock()
        self.stats = RecorderStats()

    def before_step(self) -> None:
        if self._before is not None and self._group > 1:
            return  # inside a group: its snapshot was taken before its first step
        started = time.perf_counter()
        self._before = {k: v.detach().clone() for k, v in float_state(self._model).items()}
        self.stats.stall_seconds += time.perf_counter() - started

    def after_step(self, *, step: int, epoch: int, batch: int) -> None:
        if self._before is None:
            raise RuntimeError("after_step() without before_step()")
        if self._group > 1:
            assert self._epoch_batches is not None
            last_of_epoch = batch == self._epoch_batches[epoch] - 1
            if (batch + 1) % self._group and not last_of_epoch:
                return  # the group goes on
            step, batch = self._groups, batch // self._group
            self._groups += 1
        started = time.perf_counter()
        after = float_state(self._model)
        with torch.no_grad():
            delta = {k: after[k].detach() - self._before[k] for k in self._before}
        self._before = None
        self.stats.stall_seconds += time.perf_counter() - started
        self.submit(delta, step=step, epoch=epoch, batch=batch)

    def submit(self, delta: dict[str, torch.Tensor], *, step: int, epoch: int, batch: int) -> None:
        """Hand one step's update (``delta``: the tensors of the run's format, on any device,
        owned by this call: the caller must not change them afterwards) to a background
        writer; used by :meth:`after_step` and by recorders that take their own snapshots
        (:mod:`unlearning_core.recording.loop`). Returns without waiting for the device."""
        started = time.perf_counter()
        ready = None
        encoded = False
        if any(v.is_cuda for v in delta.values()):
            with torch.no_grad():
                if self._fmt.mode == "full" or self._fmt.packed:
                    # a gather by the fixed index is one async kernel, and copies fewer bytes
                    delta = encode_update(delta, self._fmt, epoch=epoch, batch=batch)
                    encoded = True
                delta = {k: v.to("cpu", non_blocking=True) for k, v in delta.items()}  # pinned
            ready = torch.cuda.Event()
            ready.record()
        waited = time.perf_counter()
        self._slots.acquire()
        self.stats.backpressure_seconds += time.perf_counter() - waited
        self._reap(block=False)
        self._pending.append(self._pool.submit(self._write, delta, ready, encoded, step, epoch, batch))
        self.stats.stall_seconds += time.perf_counter() - started

    def _write(
        self, delta: dict[str, torch.Tensor], ready: torch.cuda.Event | None, encoded: bool, step: int,
        epoch: int, batch: int,
    ) -> StepBlob:
        try:
            started = time.perf_counter()
            if ready is not None:
                ready.synchronize()  # the copy to host memory has landed
            with torch.no_grad():
                host = delta if encoded else encode_update(delta, self._fmt, epoch=epoch, batch=batch)
            encoded_at = time.perf_counter()
            data = pack_blob(serialize(host, epoch=epoch, batch=batch), self._fmt)
            ref = self._store.put(update_key(self._prefix, epoch, batch), data)
            with self._stats_lock:
                self.stats.encode_seconds += encoded_at - started
                self.stats.write_seconds += time.perf_counter() - encoded_at
            return StepBlob(step=step, epoch=epoch, batch=batch, ref=ref)
        finally:
            self._slots.release()

    def _reap(self, *, block: bool) -> None:
        """Collect finished writes; re-raise the first write error in the training thread."""
        still: list[Future[StepBlob]] = []
        for fut in self._pending:
            if block or fut.done():
                self.stats.blobs.append(fut.result())
            else:
                still.append(fut)
        self._pending = still

    def close(self) -> RecorderStats:
        started = time.perf_counter()
        try:
            self._reap(block=True)
        finally:
            self._pool.shutdown(wait=True)
        self.stats.stall_seconds += time.perf_counter() - started
        self.stats.blobs.sort(key=lambda b: b.step)
        return self.stats


