"""Bytes a recording will store, and the recording that fits a storage budget.

The estimate is exact up to each blob's small safetensors header: per recorded step, every
float tensor's kept entries (all of them for ``full``; for ``partial`` the fixed mask's
exact count, random masks' expected count, magnitude's top-k plus an int32 index each) times
the stored dtype's size; one recorded step per optimizer step, or per group of
``group_steps`` steps of an epoch. ``fit`` keeps what the user chose as long as it fits and
otherwise gives up, in this order, what costs forgetting least: float32 precision (float16
halves the bytes, summed back in float32), then step granularity (groups of 2, 4, 8, ...
steps: an erasure then subtracts whole groups). Pruning shares are the user's trade-off
between forgetting and what the model keeps, so ``fit`` never changes them; when even the
coarsest grouping does not fit it refuses, with the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from unlearning_core.errors import RunError
from unlearning_core.recording.masks import FixedMasks, PruneSchedule, magnitude_k

#: bytes per stored value
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: safetensors header per blob, per tensor entry (name, dtype, shape, offsets), roughly
HEADER_PER_TENSOR = 96
#: the coarsest grouping ``fit`` tries
MAX_GROUP = 1024


@dataclass(frozen=True)
class StorageEstimate:
    bytes_per_step: int  # one recorded step (blob)
    recorded_steps: int
    mask_bytes: int  # the fixed mask index, once per run

    @property
    def total(self) -> int:
        return self.bytes_per_step * self.recorded_steps + self.mask_bytes


def recorded_steps(epoch_batches: list[int], group_steps: int) -> int:
    return sum(math.ceil(n / group_steps) for n in epoch_batches)


def kept_entries(
    shapes: Mapping[str, tuple[int, ...]], *, mode: str, mask: str, schedule: PruneSchedule | None, seed: int
) -> dict[str, int]:
    """Entries stored per tensor and step (fixed masks: counted on the mask itself)."""
    numel = {k: math.prod(v) for k, v in shapes.items()}
    if mode == "full":
        return numel
    assert schedule is not None
    shares = schedule.tensor_shares(shapes)
    if mask == "fixed":
        masks = FixedMasks.generate(dict(shapes), shares, seed=seed)
        return {k: masks.kept(k) for k in shapes}
    return {k: magnitude_k(numel[k], shares[k]) if mask == "magnitude" else round((1 - shares[k]) * numel[k])
            for k in shapes}


def estimate(
    shapes: Mapping[str, tuple[int, ...]], *, mode: str, mask: str = "fixed", schedule: PruneSchedule | None = None,
    dtype: str = "float32", group_steps: int = 1, epoch_batches: list[int], seed: int = 0,
) -> StorageEstimate:
    """What a recording with these settings stores (see the module doc)."""
    if mode == "none":
        return StorageEstimate(0, 0, 0)
    kept = kept_entries(shapes, mode=mode, mask=mask, schedule=schedule, seed=seed)
    per_value = DTYPE_BYTES[dtype] + (4 if mode == "partial" and mask == "magnitude" else 0)
    tensors = len(shapes) * (2 if mode == "partial" and mask == "magnitude" else 1)
    per_step = sum(kept.values()) * per_value + tensors * HEADER_PER_TENSOR
    mask_bytes = sum(math.ceil(math.prod(v) / 8) for v in shapes.values()) if mode == "partial" and mask == "fixed" else 0
    return StorageEstimate(per_step, recorded_steps(epoch_batches, group_steps), mask_bytes)


@dataclass(frozen=True)
class Fit:
    dtype: str
    group_steps: int
    estimate: StorageEstimate
    changed: tuple[str, ...]  # what was given up to fit, in words


def fit(
    budget: int, shapes: Mapping[str, tuple[int, ...]], *, mode: str, mask: str, schedule: PruneSchedule | None,
    dtype: str, group_steps: int, epoch_batches: list[int], seed: int = 0,
) -> Fit:
    """The recording closest to the one asked for whose estimate fits ``budget`` bytes, or a
    :class:`RunError` with the smallest estimate (see the module doc)."""
    if budget <= 0:
        raise RunError(f"--max-storage must be positive, got {budget} bytes")

    def est(dt: str, k: int) -> StorageEstimate:
        return estimate(shapes, mode=mode, mask=mask, schedule=schedule, dtype=dt, group_steps=k,
                        epoch_batches=epoch_batches, seed=seed)

    dtypes = [dtype] + (["float16"] if DTYPE_BYTES[dtype] > 2 else [])
    longest = max(epoch_batches, default=1)
    groups = [group_steps]
    while groups[-1] < min(MAX_GROUP, longest):
        groups.append(min(groups[-1] * 2, longest))
    for k in groups:
        for dt in dtypes:
            e = est(dt, k)
            if e.total <= budget:
                changed = ((f"stored as {dt} instead of {dtype}",) if dt != dtype else ()) + (
                    (f"one recorded step per {k} optimizer steps instead of {group_steps}",) if k != group_steps else ())
                return Fit(dt, k, e, changed)
    smallest = est(dtypes[-1], groups[-1])
    raise RunError(
        f"the recording cannot fit in {human_bytes(budget)}: as asked it stores about "
        f"{human_bytes(est(dtype, group_steps).total)}, and even as {dtypes[-1]} with one recorded step per "
        f"{groups[-1]} optimizer steps about {human_bytes(smallest.total)}; prune harder (--prune-first/--prune-last, "
        "--skip-layers), record fewer epochs, or raise --max-storage"
    )


UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9, "T": 10**12,
         "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """``"500MB"``, ``"1.5 GB"``, ``"2GiB"``, ``"1000000"`` -> bytes, or a :class:`RunError`."""
    t = text.strip().upper().replace(" ", "")
    number = t.rstrip("KMGTIB")
    unit = t[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in UNITS or value <= 0 or not math.isfinite(value):
        raise RunError(f"cannot read a storage size from {text!r}: use e.g. 500MB, 2GB, 1.5TB or 2GiB")
    return int(value * UNITS[unit])


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
