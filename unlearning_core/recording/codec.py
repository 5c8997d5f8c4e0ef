"""Encoding of one optimizer step's (pruned) update as a safetensors blob, and back.

Layouts, one blob per step so that unlearning reads only the affected steps:

- ``full``: every float tensor of the state dict, dense.
- ``partial`` + ``random`` mask: each tensor's kept entries as a flat vector, in flat order;
  the positions are regenerated from the mask seed, so nothing else is stored.
- ``partial`` + ``magnitude`` mask: ``idx/<name>`` (int32 flat positions) and
  ``val/<name>`` for each tensor.

Decoding can prune harder than the recording did (``prune`` shares at least the recorded
ones): the masks are nested, so the harder mask selects from what was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearning_core.errors import RunError
from unlearning_core.recording.masks import (
    MaskKind,
    magnitude_k,
    magnitude_topk,
    random_keep,
    random_scores,
)
from unlearning_core.vocab import RecordMode

RECORD_MODES: tuple[str, ...] = get_args(RecordMode)
STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class UpdateFormat:
    """How a run's updates were recorded; everything a decoder needs besides the blob."""

    mode: RecordMode
    mask: MaskKind
    mask_seed: int
    dtype: str
    shares: Mapping[str, float]  # recorded pruning share per tensor (0 for full)
    shapes: Mapping[str, tuple[int, ...]]


def encode_update(
    delta: Mapping[str, torch.Tensor], fmt: UpdateFormat, *, epoch: int, batch: int
) -> dict[str, torch.Tensor]:
    """Tensors to store for one step (still on the delta's device; caller moves them)."""
    dtype = STORE_DTYPES[fmt.dtype]
    out: dict[str, torch.Tensor] = {}
    for name, d in delta.items():
        if fmt.mode == "full":
            out[name] = d.to(dtype)
        elif fmt.mask == "random":
            keep = random_keep(
                d.shape, fmt.shares[name], seed=fmt.mask_seed, epoch=epoch, batch=batch,
                tensor_name=name,
            ).to(d.device)
            out[name] = d[keep].to(dtype)
        else:
            idx, val = magnitude_topk(d, fmt.shares[name])
            out[f"idx/{name}"] = idx.to(torch.int32)
            out[f"val/{name}"] = val.to(dtype)
    return out


def serialize(tensors: Mapping[str, torch.Tensor], *, epoch: int, batch: int) -> bytes:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(cpu, metadata={"epoch": str(epoch), "batch": str(batch)})


def decode_update(
    blob: bytes,
    fmt: UpdateFormat,
    *,
    epoch: int,
    batch: int,
    prune: Mapping[str, float] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Dense float32 update per tensor, optionally pruned harder (``prune`` per tensor)."""
    stored = st_load(blob)
    dense: dict[str, torch.Tensor] = {}
    for name, shape in fmt.shapes.items():
        target = prune[name] if prune is not None else fmt.shares[name]
        if target < fmt.shares[name] - 1e-12:
            raise RunError(
                f"cannot prune {name} at {target:.3f}: the run stored it pruned at "
                f"{fmt.shares[name]:.3f}, and pruned entries are gone"
            )
        harder = target > fmt.shares[name] + 1e-12
        numel = 1
        for s in shape:
            numel *= s
        if fmt.mode == "partial" and fmt.mask == "magnitude":
            idx = stored[f"idx/{name}"].to(device=device, dtype=torch.int64)
            val = stored[f"val/{name}"].to(device=device, dtype=torch.float32)
            if harder:
                k = magnitude_k(numel, target)
                pick = torch.topk(val.abs(), k, sorted=False).indices
                idx, val = idx[pick], val[pick]
            flat = torch.zeros(numel, dtype=torch.float32, device=device)
            flat[idx] = val
            dense[name] = flat.reshape(shape)
            continue
        if fmt.mode == "full" and not harder:
            dense[name] = stored[name].to(device=device, dtype=torch.float32)
            continue
        if fmt.mode == "full" and fmt.mask == "magnitude":
            idx, val = magnitude_topk(stored[name].to(device=device, dtype=torch.float32), target)
            flat = torch.zeros(numel, dtype=torch.float32, device=device)
            flat[idx] = val
            dense[name] = flat.reshape(shape)
            continue
        scores = random_scores(
            shape, seed=fmt.mask_seed, epoch=epoch, batch=batch, tensor_name=name
        ).to(device)
        if fmt.mode == "full":
            out = stored[name].to(device=device, dtype=torch.float32)
        else:
            out = torch.zeros(shape, dtype=torch.float32, device=device)
            out[scores >= fmt.shares[name]] = stored[name].to(device=device, dtype=torch.float32)
        dense[name] = out * (scores >= target) if harder else out
    return dense
