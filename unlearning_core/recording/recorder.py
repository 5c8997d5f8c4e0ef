"""Records each optimizer step's parameter update while training runs.

Delta_{e,b} = state after the step - state before it, over every float tensor of the
state dict: parameters *and* float buffers such as BatchNorm running statistics (those
change in the forward pass, so the "before" snapshot is taken before the forward).
Subtracting the recorded deltas is then complete: all of them together give back the
initial state.

Blobs are serialised and written on a small thread pool so that training only waits for
the device-side subtraction, masking and the device-to-host copy; the time training does
spend blocked (on that work and on a full write queue) is measured as ``stall_seconds``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from unlearning_core.recording.codec import UpdateFormat, encode_update, serialize, with_fixed_masks
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
    stall_seconds: float = 0.0

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
    ) -> None:
        self._model = model
        self._fmt = fmt
        self._store = store
        self._prefix = prefix
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="lethe-writer")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: list[Future[StepBlob]] = []
        self._before: dict[str, torch.Tensor] | None = None
        self.stats = RecorderStats()

    def before_step(self) -> None:
        started = time.perf_counter()
        self._before = {k: v.detach().clone() for k, v in float_state(self._model).items()}
        self.stats.stall_seconds += time.perf_counter() - started

    def after_step(self, *, step: int, epoch: int, batch: int) -> None:
        if self._before is None:
            raise RuntimeError("after_step() without before_step()")
        started = time.perf_counter()
        after = float_state(self._model)
        with torch.no_grad():
            delta = {k: after[k].detach() - self._before[k] for k in self._before}
        self._before = None
        self.stats.stall_seconds += time.perf_counter() - started
        self.submit(delta, step=step, epoch=epoch, batch=batch)

    def submit(self, delta: dict[str, torch.Tensor], *, step: int, epoch: int, batch: int) -> None:
        """Encode one step's update (``delta``: the tensors of the run's format, on any
        device) and hand it to a background writer; used by :meth:`after_step` and by
        recorders that take their own snapshots (:mod:`unlearning_core.recording.loop`)."""
        started = time.perf_counter()
        with torch.no_grad():
            encoded = encode_update(delta, self._fmt, epoch=epoch, batch=batch)
            host = {k: v.to("cpu", non_blocking=False) for k, v in encoded.items()}
        self._slots.acquire()
        self._reap(block=False)
        self._pending.append(self._pool.submit(self._write, host, step, epoch, batch))
        self.stats.stall_seconds += time.perf_counter() - started

    def _write(self, host: dict[str, torch.Tensor], step: int, epoch: int, batch: int) -> StepBlob:
        try:
            data = serialize(host, epoch=epoch, batch=batch)
            ref = self._store.put(update_key(self._prefix, epoch, batch), data)
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


