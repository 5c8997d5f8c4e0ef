"""Encoding of one optimizer step's (pruned) update as a safetensors blob, and summing them back.

Layouts, one blob per step so that unlearning reads only the affected steps:

- ``full``: every float tensor of the state dict, dense.
- ``partial`` + ``fixed`` mask: each tensor's kept entries as one contiguous ("packed")
  vector, in the order of the run's stored mask index (:class:`FixedMasks`, ascending flat
  positions); the positions are stored once per run, never per step.
- ``partial`` + ``random`` mask: each tensor's kept entries as a flat vector, in flat order;
  the positions are regenerated from the mask seed and the step, so nothing else is stored.
- ``partial`` + ``magnitude`` mask: ``idx/<name>`` (int32 flat positions) and
  ``val/<name>`` for each tensor.

Values are stored as float32, float16 or bfloat16 and always summed in float32.

Summing (:class:`UpdateSum`) can prune harder than the recording did (``prune`` shares at
least the recorded ones): the masks are nested, so the harder mask selects from what was
stored. With a fixed mask the sum is taken over the packed vectors (or the dense updates
of a full run) and the mask applied once at the end: selecting and masking are linear, so
this is exactly the sum of the masked updates, with no per-step mask rebuilt.
"""

from __future__ import annotations

import json
import sys
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import get_args

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearning_core.errors import RunError
from unlearning_core.recording import serial
from unlearning_core.recording.masks import (
    FixedMasks,
    MaskKind,
    fixed_keep,
    magnitude_k,
    magnitude_topk,
    random_keep,
    random_scores,
)
from unlearning_core.vocab import RecordMode

RECORD_MODES: tuple[str, ...] = get_args(RecordMode)
STORE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Blobs are parsed without copying: tensors are read-only views of the blob's bytes, which
# the summation only reads. Torch warns once per process that such a buffer is not
# writable; that one warning is spent here, silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    torch.frombuffer(b"\0\0\0\0", dtype=torch.uint8)

_ST_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I32": torch.int32,
    "I64": torch.int64,
}


@dataclass(frozen=True)
class UpdateFormat:
    """How a run's updates were recorded; everything a decoder needs besides the blob."""

    mode: RecordMode
    mask: MaskKind
    mask_seed: int
    dtype: str
    shares: Mapping[str, float]  # recorded pruning share per tensor (0 for full)
    shapes: Mapping[str, tuple[int, ...]]
    #: the stored fixed masks of a ``partial`` + ``fixed`` run (:func:`with_fixed_masks`)
    fixed: FixedMasks | None = None
    #: ``zlib``: each blob is the serialised update compressed (level 1), see :func:`pack_blob`
    compression: str = "none"

    @property
    def packed(self) -> bool:
        """Each step stores packed vectors under a fixed mask index."""
        return self.mode == "partial" and self.mask == "fixed"


def with_fixed_masks(fmt: UpdateFormat) -> UpdateFormat:
    """``fmt`` with its fixed masks generated from the seed (a new partial + fixed run)."""
    if not fmt.packed or fmt.fixed is not None:
        return fmt
    return replace(fmt, fixed=FixedMasks.generate(fmt.shapes, fmt.shares, seed=fmt.mask_seed))


def _masks(fmt: UpdateFormat) -> FixedMasks:
    if fmt.fixed is None:
        raise RunError("updates recorded with fixed masks need the run's mask index (mask.safetensors)")
    return fmt.fixed


def encode_update(
    delta: Mapping[str, torch.Tensor], fmt: UpdateFormat, *, epoch: int, batch: int
) -> dict[str, torch.Tensor]:
    """Tensors to store for one step (still on the delta's device; caller moves them)."""
    dtype = STORE_DTYPES[fmt.dtype]
    out: dict[str, torch.Tensor] = {}
    for name, d in delta.items():
        if fmt.mode == "full":
            out[name] = d.to(dtype)
        elif fmt.mask == "fixed":
            idx = _masks(fmt).index_on(name, d.device)
            out[name] = d.reshape(-1).index_select(0, idx).to(dtype)
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


COMPRESSIONS: tuple[str, ...] = ("none", "zlib")
#: zlib level 1: on recorded updates it keeps about 90% of level 6's saving at twice the
#: speed (bench/storage_options.py measures both)
ZLIB_LEVEL = 1


def pack_blob(data: bytes, fmt: UpdateFormat) -> bytes:
    """A serialised update as stored: compressed when the run asked for it."""
    if fmt.compression == "zlib":
        return zlib.compress(data, ZLIB_LEVEL)
    return data


def unpack_blob(blob: bytes, fmt: UpdateFormat) -> bytes:
    """The serialised update inside a stored blob (the store has checked its sha256)."""
    if fmt.compression == "zlib":
        try:
            return zlib.decompress(blob)
        except zlib.error as exc:
            raise RunError(f"an update blob of a zlib-compressed run does not decompress: {exc}") from None
    return blob


def _header(blob: bytes) -> tuple[dict, int]:
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"an update blob is not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise RunError("an update blob is not a safetensors file")
    return header, 8 + n


def read_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors blob as read-only views of its bytes (no copy).

    Equal to ``safetensors.torch.load`` but without copying every tensor out of the blob;
    the views keep ``blob`` alive and must not be written to.
    """
    if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian
        return st_load(blob)
    header, base = _header(blob)
    size = len(blob)
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            return st_load(blob)  # an unusual dtype: let safetensors handle it
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        item = torch.empty((), dtype=dtype).element_size()
        count = (end - start) // item
        if start < 0 or end < start or base + end > size or count * item != end - start:
            raise RunError(f"an update blob is corrupt (tensor {name!r} lies outside it)")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(blob, dtype=dtype, count=count, offset=base + start).reshape(shape)
    return out


@dataclass(frozen=True)
class _Layout:
    """Where each tensor lies in a blob whose tensors share one dtype and fill its data
    section back to back: the whole section is then one vector (one add per blob)."""

    dtype: torch.dtype
    total: int  # elements in the data section
    at: Mapping[str, tuple[int, int]]  # name -> (first element, elements)


def _layout(header: dict) -> _Layout | None:
    entries = sorted(
        (info["data_offsets"][0], info["data_offsets"][1], name, info.get("dtype"))
        for name, info in header.items() if name != "__metadata__"
    )
    dtypes = {e[3] for e in entries}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _ST_DTYPES:
        return None
    dtype = _ST_DTYPES[next(iter(dtypes))]
    item = torch.empty((), dtype=dtype).element_size()
    at, pos = {}, 0
    for start, end, name, _ in entries:
        if start != pos * item or (end - start) % item:
            return None
        at[name] = (pos, (end - start) // item)
        pos += (end - start) // item
    return _Layout(dtype=dtype, total=pos, at=at)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class UpdateSum:
    """The float32 sum, on ``device``, of stored updates of one run, pruned at ``prune``.

    ``add`` one blob per step (any order; each step once), then ``result()`` gives the dense
    sum per tensor. Stored float16 / bfloat16 values are added into float32 accumulators.

    Full updates and the packed vectors of fixed masks are summed as one vector per blob
    (the blob's whole data section, read in place; on a GPU one host-to-device copy per
    blob), and a fixed mask is applied once in ``result()``: a scatter of the packed sums,
    after selecting the subset a harder share keeps. Random and magnitude masks differ per
    step, so their blobs are decoded tensor by tensor, each with its own mask.
    """

    def __init__(
        self,
        fmt: UpdateFormat,
        *,
        prune: Mapping[str, float] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.fmt = fmt
        self.device = torch.device(device)
        self.steps = 0
        self.target: dict[str, float] = {}
        self.harder: dict[str, bool] = {}
        for name in fmt.shapes:
            target = prune[name] if prune is not None else fmt.shares[name]
            if target < fmt.shares[name] - 1e-12:
                raise RunError(
                    f"cannot prune {name} at {target:.3f}: the run stored it pruned at "
                    f"{fmt.shares[name]:.3f}, and pruned entries are gone"
                )
            self.target[name] = target
            self.harder[name] = target > fmt.shares[name] + 1e-12
        self._masks = _masks(fmt) if fmt.packed else None
        #: one vector per blob: full updates (masked once at the end if at all) and packed ones
        self.flat = fmt.packed or (fmt.mode == "full" and (fmt.mask == "fixed" or not any(self.harder.values())))
        self._count = {
            name: self._masks.kept(name) if self._masks is not None else _numel(shape)
            for name, shape in fmt.shapes.items()
        }
        self._layout: _Layout | None = None
        self._layouts: dict[bytes, _Layout | None] = {}
        self._acc_flat: torch.Tensor | None = None
        self._acc: dict[str, torch.Tensor] = {}
        if not self.flat:
            self._acc = {
                name: torch.zeros(shape, dtype=torch.float32, device=self.device)
                for name, shape in fmt.shapes.items()
            }

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def add(self, blob: bytes, *, epoch: int, batch: int) -> None:
        """Add one step's stored update (its blob, as written by :func:`serialize` and
        :func:`pack_blob`)."""
        blob = unpack_blob(blob, self.fmt)
        if self.flat:
            self._add_flat(blob)
        else:
            self._add_tensors(blob, epoch=epoch, batch=batch)
        self.steps += 1

    # -- one vector per blob ---------------------------------------------------------------
    def _blob_layout(self, blob: bytes) -> tuple[_Layout | None, int]:
        """The blob's layout and where its data starts. Every step's blob of a run has the
        same tensor entries and differs only in its ``__metadata__`` (epoch, batch), which
        :func:`serialize` writes first: the entries after it key a cache, so the header is
        parsed once per run rather than once per blob."""
        n = int.from_bytes(blob[:8], "little")
        head = blob[8 : 8 + n]
        key = None
        if head.startswith(b'{"__metadata__":{'):
            end = head.find(b"}", 17)
            key = head[end:] if end > 0 and b"{" not in head[17:end] else None
        if key is not None and key in self._layouts:
            return self._layouts[key], 8 + n
        header, base = _header(blob)
        layout = _layout(header) if sys.byteorder == "little" else None
        if key is not None and len(self._layouts) < 8:
            self._layouts[key] = layout
        return layout, base

    def _add_flat(self, blob: bytes) -> None:
        layout, base = self._blob_layout(blob)
        if self._acc_flat is None:
            if layout is None:  # pragma: no cover - blobs written by serialize() always qualify
                at, pos = {}, 0
                for name in self.fmt.shapes:
                    at[name], pos = (pos, self._count[name]), pos + self._count[name]
                layout = _Layout(torch.float32, pos, at)
            self._check(layout)
            self._layout = layout
            self._acc_flat = serial.zeros(layout.total, self.device)
        assert self._layout is not None
        if layout is not None and (layout is self._layout or layout == self._layout):
            if layout.total:
                view = torch.frombuffer(blob, dtype=layout.dtype, count=layout.total, offset=base)
                serial.add_(self._acc_flat, self._to(view))
            return
        stored = read_tensors(blob)  # a blob laid out differently: tensor by tensor
        for name, (start, count) in self._layout.at.items():
            value = stored.get(name)
            if value is None or value.numel() != count:
                raise RunError(f"an update blob holds no {count} entries of {name}; it does not match the run")
            serial.add_(self._acc_flat[start : start + count], self._to(value))

    def _check(self, layout: _Layout) -> None:
        names = set(self.fmt.shapes)
        if set(layout.at) != names:
            missing = sorted(names - set(layout.at)) or sorted(set(layout.at) - names)
            raise RunError(f"an update blob does not match the run's tensors ({missing[0]!r})")
        for name, (_, count) in layout.at.items():
            if count != self._count[name]:
                raise RunError(
                    f"an update blob holds {count} entries of {name}, the run expects {self._count[name]}"
                )

    # -- tensor by tensor, a mask per step -----------------------------------------------------
    def _add_tensors(self, blob: bytes, *, epoch: int, batch: int) -> None:
        fmt = self.fmt
        stored = read_tensors(blob)
        try:
            for name, shape in fmt.shapes.items():
                acc = self._acc[name]
                if fmt.mode == "partial" and fmt.mask == "magnitude":
                    self._add_magnitude(acc, stored[f"idx/{name}"], stored[f"val/{name}"], name)
                elif fmt.mode == "full":
                    if self.harder[name]:
                        self._add_full_pruned(acc, stored[name], name, shape, epoch=epoch, batch=batch)
                    else:
                        serial.add_(acc, self._to(stored[name]))
                else:  # partial + random: the step's own mask, regenerated
                    scores = random_scores(
                        shape, seed=fmt.mask_seed, epoch=epoch, batch=batch, tensor_name=name
                    ).to(self.device)
                    keep = scores >= fmt.shares[name]
                    vals = self._to(stored[name]).to(torch.float32)
                    if self.harder[name]:
                        vals = vals * (scores[keep] >= self.target[name])
                    acc[keep] += vals
        except KeyError as exc:
            raise RunError(f"an update blob has no tensor {exc}; it does not match the run's format") from None

    def _add_magnitude(self, acc: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, name: str) -> None:
        idx = self._to(idx).to(torch.int64)
        val = self._to(val).to(torch.float32)
        if self.harder[name]:
            k = magnitude_k(acc.numel(), self.target[name])
            pick = torch.topk(val.abs(), k, sorted=False).indices
            idx, val = idx[pick], val[pick]
        acc.view(-1).index_add_(0, idx, val)

    def _add_full_pruned(
        self, acc: torch.Tensor, value: torch.Tensor, name: str, shape: tuple[int, ...], *, epoch: int, batch: int
    ) -> None:
        """A full update pruned per step at request time (random or magnitude masks)."""
        dense = self._to(value).to(torch.float32).reshape(shape)
        if self.fmt.mask == "magnitude":
            idx, val = magnitude_topk(dense, self.target[name])
            acc.view(-1).index_add_(0, idx, val)
            return
        scores = random_scores(
            shape, seed=self.fmt.mask_seed, epoch=epoch, batch=batch, tensor_name=name
        ).to(self.device)
        acc.add_(dense * (scores >= self.target[name]))

    # -- the sum -------------------------------------------------------------------------------
    def result(self) -> dict[str, torch.Tensor]:
        """The dense float32 sum per tensor (on ``device``)."""
        fmt = self.fmt
        if not self.flat:
            return dict(self._acc)
        out: dict[str, torch.Tensor] = {}
        for name, shape in fmt.shapes.items():
            if self._acc_flat is None or self._layout is None:
                acc = serial.zeros(self._count[name], self.device)
            else:
                start, count = self._layout.at[name]
                acc = self._acc_flat[start : start + count]
            if self._masks is not None:  # packed: one scatter, after selecting a harder subset
                idx = self._masks.index_on(name, self.device)
                sel = self._masks.select(name, self.target[name])
                if sel is not None:
                    sel = sel.to(self.device)
                    idx, acc = idx[sel], acc[sel]
                out[name] = serial.scatter(_numel(shape), idx, acc).reshape(shape)
            elif fmt.mask == "fixed" and self.harder[name]:  # a full run pruned by a fixed mask
                keep = fixed_keep(shape, self.target[name], seed=fmt.mask_seed, tensor_name=name)
                out[name] = acc.reshape(shape) * keep.to(self.device)
            else:
                out[name] = acc.reshape(shape)
        return out


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
    total = UpdateSum(fmt, prune=prune, device=device)
    total.add(blob, epoch=epoch, batch=batch)
    return total.result()
