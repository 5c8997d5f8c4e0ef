"""Layer-wise pruning masks P_l for partial amnesiac recording.

The pruning share falls with depth: early layers learn generic features that every class
shares, so keeping few of their update entries costs little forgetting power, while the
deep, class-specific layers keep more. Shares are interpolated linearly from the first to
the last layer in state-dict (input-to-output) order.

Every mask kind is *nested*: the entries kept at pruning share p' >= p are a subset of
those kept at p. That is what lets an unlearning request prune harder than the recording
did, and what makes partial-with-pruning-0 identical to full recording.

- ``fixed`` (the default): the formula's P_l, one 0/1 matrix per tensor, the same for every
  step. Entry kept iff u >= p, with u ~ U[0,1) drawn once per tensor from a generator
  seeded by (seed, tensor name). A partial run stores the mask once, one bit per entry, in
  ``mask.safetensors`` (:class:`FixedMasks`), and each step's blob holds only the kept
  values, contiguous ("packed"): unlearning sums packed vectors and scatters once.
- ``random``: entry kept iff u >= p, with u ~ U[0,1) drawn from a generator seeded by
  (seed, epoch, batch, tensor name): a new mask for every step. Drawn on the CPU so CPU and
  CUDA runs agree, and regenerated on demand, so no index is stored.
- ``magnitude``: the top-k entries of |Delta| with k = round((1-p) * numel); the flat
  indices are stored next to the values.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearning_core.errors import RunError

MaskKind = Literal["fixed", "random", "magnitude"]
MASK_KINDS: tuple[str, ...] = ("fixed", "random", "magnitude")
#: The mask of new recordings unless one is asked for (see docs/concepts/recording.md).
DEFAULT_MASK: MaskKind = "fixed"


@dataclass(frozen=True)
class PruneSchedule:
    """Pruning shares at the first and last layer; layers between are interpolated.

    ``skip``: the first ``skip`` layers (depth order) are not recorded at all (share 1.0:
    early, generic layers keep none of their updates, and store nothing); the shares then go
    from ``first`` to ``last`` over the remaining layers."""

    first: float
    last: float
    skip: int = 0

    def __post_init__(self) -> None:
        for name, value in (("first", self.first), ("last", self.last)):
            if not 0.0 <= value < 1.0:
                raise RunError(f"prune-{name} must be in [0, 1), got {value}")
        if self.skip < 0:
            raise RunError(f"skip-layers must be 0 or more, got {self.skip}")

    def layer_shares(self, n_layers: int) -> list[float]:
        skipped = min(self.skip, n_layers)
        rest = n_layers - skipped
        if rest <= 1:
            return [1.0] * skipped + [self.first] * rest
        step = (self.last - self.first) / (rest - 1)
        return [1.0] * skipped + [self.first + i * step for i in range(rest)]

    def tensor_shares(self, tensor_names: Iterable[str]) -> dict[str, float]:
        """Share for each tensor: the share of the layer (module) that owns it."""
        names = list(tensor_names)
        layers = layer_order(names)
        shares = self.layer_shares(len(layers))
        position = {layer: i for i, layer in enumerate(layers)}
        return {name: shares[position[layer_of(name)]] for name in names}

    def covers(self, other: PruneSchedule, tensor_names: Iterable[str]) -> bool:
        """True if this schedule prunes every tensor at least as much as ``other``."""
        names = list(tensor_names)
        mine, theirs = self.tensor_shares(names), other.tensor_shares(names)
        return all(mine[n] >= theirs[n] - 1e-12 for n in names)


def layer_of(tensor_name: str) -> str:
    """The module that owns a state-dict entry (``features.0.weight`` -> ``features.0``)."""
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def layer_order(tensor_names: Iterable[str]) -> list[str]:
    """Layers in order of first appearance, i.e. the depth order of the state dict."""
    seen: dict[str, None] = {}
    for name in tensor_names:
        seen.setdefault(layer_of(name), None)
    return list(seen)


def _seeded(key: str) -> torch.Generator:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


def _generator(seed: int, epoch: int, batch: int, tensor_name: str) -> torch.Generator:
    return _seeded(f"{seed}:{epoch}:{batch}:{tensor_name}")


def random_scores(
    shape: torch.Size | tuple[int, ...], *, seed: int, epoch: int, batch: int, tensor_name: str
) -> torch.Tensor:
    """The uniform draws behind a random mask (CPU, float32), reproducible from the key."""
    return torch.rand(tuple(shape), generator=_generator(seed, epoch, batch, tensor_name))


def random_keep(
    shape: torch.Size | tuple[int, ...],
    share: float,
    *,
    seed: int,
    epoch: int,
    batch: int,
    tensor_name: str,
) -> torch.Tensor:
    """Boolean keep-mask (CPU) that prunes about ``share`` of the entries."""
    return random_scores(shape, seed=seed, epoch=epoch, batch=batch, tensor_name=tensor_name) >= share


def magnitude_k(numel: int, share: float) -> int:
    return max(0, min(numel, round((1.0 - share) * numel)))


def magnitude_topk(delta: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (sorted ascending) and values of the top-k |delta| entries."""
    flat = delta.reshape(-1)
    k = magnitude_k(flat.numel(), share)
    if k == flat.numel():
        idx = torch.arange(flat.numel(), device=flat.device)
    else:
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
    return idx, flat[idx]


def shares_for(state: Mapping[str, torch.Tensor], schedule: PruneSchedule) -> dict[str, float]:
    return schedule.tensor_shares(state.keys())


# -- fixed masks (the formula's P_l) ----------------------------------------------------


def fixed_scores(shape: torch.Size | tuple[int, ...], *, seed: int, tensor_name: str) -> torch.Tensor:
    """The per-entry uniform draws u of a fixed mask (CPU, float32): one per tensor, the same
    for every step. The mask at share p keeps u >= p, so masks at harder shares are subsets."""
    return torch.rand(tuple(shape), generator=_seeded(f"fixed:{seed}:{tensor_name}"))


def fixed_keep(shape: torch.Size | tuple[int, ...], share: float, *, seed: int, tensor_name: str) -> torch.Tensor:
    """Boolean keep-mask (CPU) of the fixed mask at ``share``."""
    return fixed_scores(shape, seed=seed, tensor_name=tensor_name) >= share


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


@dataclass(frozen=True)
class FixedMasks:
    """The fixed masks of a partial run: per tensor, the flat positions kept at the recorded
    share (ascending, int64, CPU).

    Stored once per run as one bit per entry (``mask.safetensors``, its sha256 in
    ``run.json``), so unlearning rebuilds no mask: a step's packed vector (the kept values in
    this order) is ``delta.flatten()[index]``, and the positions come back from the bits in
    one pass. A harder share p' keeps the packed entries whose u >= p' (:meth:`select`); the
    u of the kept entries are drawn again from the seed for that, once per unlearning, and
    checked against the stored bits.
    """

    seed: int
    shares: Mapping[str, float]
    shapes: Mapping[str, tuple[int, ...]]
    index: Mapping[str, torch.Tensor]
    _scores: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    _on_device: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def generate(
        cls, shapes: Mapping[str, tuple[int, ...]], shares: Mapping[str, float], *, seed: int
    ) -> FixedMasks:
        index, scores = {}, {}
        for name, shape in shapes.items():
            u = fixed_scores(shape, seed=seed, tensor_name=name).reshape(-1)
            idx = torch.nonzero(u >= shares[name], as_tuple=True)[0]
            index[name], scores[name] = idx, u[idx]
        return cls(seed=seed, shares=dict(shares), shapes={k: tuple(v) for k, v in shapes.items()},
                   index=index, _scores=scores)

    def kept(self, name: str) -> int:
        return int(self.index[name].numel())

    def scores(self, name: str) -> torch.Tensor:
        """The draws u of the kept entries of ``name`` (float32, in packed order)."""
        with self._lock:
            found = self._scores.get(name)
        if found is not None:
            return found
        u = fixed_scores(self.shapes[name], seed=self.seed, tensor_name=name).reshape(-1)
        keep = (u >= self.shares[name]).numpy()
        if not np.array_equal(np.flatnonzero(keep), self.index[name].numpy()):
            raise RunError(
                f"the fixed mask of {name} drawn again from its seed differs from the stored one "
                f"(torch {torch.__version__} draws other numbers than the recording's): only the "
                "recorded pruning is available for this run"
            )
        found = u[self.index[name]]
        with self._lock:
            self._scores[name] = found
        return found

    def select(self, name: str, share: float) -> torch.Tensor | None:
        """Which packed entries the mask at ``share`` (>= the recorded one) keeps, as a boolean
        vector over the packed vector; None when it keeps all of them (the recorded share)."""
        recorded = self.shares[name]
        if share < recorded - 1e-12:
            raise RunError(
                f"cannot prune {name} at {share:.3f}: the run stored it pruned at {recorded:.3f}, "
                "and pruned entries are gone"
            )
        if share <= recorded + 1e-12:
            return None
        return self.scores(name) >= share

    def index_on(self, name: str, device: torch.device | str) -> torch.Tensor:
        """The kept positions of ``name`` on ``device`` (copied there once)."""
        dev = torch.device(device)
        if dev.type == "cpu":
            return self.index[name]
        key = (name, str(dev))
        with self._lock:
            found = self._on_device.get(key)
            if found is None:
                found = self._on_device[key] = self.index[name].to(dev)
        return found

    def to_bytes(self) -> bytes:
        """One bit per entry of each tensor (``bits/<name>``, numpy ``packbits`` order)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, idx in self.index.items():
            keep = np.zeros(_numel(self.shapes[name]), dtype=bool)
            keep[idx.numpy()] = True
            tensors[f"bits/{name}"] = torch.from_numpy(np.packbits(keep))
        meta = {
            "kind": "fixed", "seed": str(self.seed), "layout": "packbits",
            "shares": json.dumps(dict(self.shares)), "shapes": json.dumps({k: list(v) for k, v in self.shapes.items()}),
        }
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, seed: int, shares: Mapping[str, float], shapes: Mapping[str, tuple[int, ...]]
    ) -> FixedMasks:
        """The stored masks, checked against the run's seed, shares and tensor shapes.

        Read with numpy (one thread: this runs once per unlearning, next to its reads)."""
        try:
            tensors = st_load(data)
            meta = _metadata(data)
            stored_shares = json.loads(meta.get("shares", "{}"))
        except Exception as exc:  # noqa: BLE001 (any parse failure is an unreadable index)
            raise RunError(f"the run's fixed-mask index is unreadable: {exc}") from None
        if meta.get("kind") != "fixed" or meta.get("seed") != str(seed) or set(stored_shares) != set(shapes):
            raise RunError("the run's fixed-mask index does not belong to its recording (seed or tensors differ)")
        index = {}
        for name, shape in shapes.items():
            if abs(float(stored_shares[name]) - shares[name]) > 1e-12:
                raise RunError(f"the run's fixed-mask index prunes {name} at {stored_shares[name]}, not {shares[name]}")
            bits = tensors.get(f"bits/{name}")
            n = _numel(shape)
            if bits is None or bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (n + 7) // 8:
                raise RunError(f"the run's fixed-mask index has no valid entry for {name}")
            keep = np.unpackbits(bits.numpy(), count=n).view(bool)
            index[name] = torch.from_numpy(np.flatnonzero(keep))
        return cls(seed=seed, shares=dict(shares), shapes={k: tuple(v) for k, v in shapes.items()}, index=index)


def _metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})
