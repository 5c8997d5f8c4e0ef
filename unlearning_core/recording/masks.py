"""Layer-wise pruning masks P_l for partial amnesiac recording.

The pruning share falls with depth: early layers learn generic features that every class
shares, so keeping few of their update entries costs little forgetting power, while the
deep, class-specific layers keep more. Shares are interpolated linearly from the first to
the last layer in state-dict (input-to-output) order.

Both mask kinds are *nested*: the entries kept at pruning share p' >= p are a subset of
those kept at p. That is what lets an unlearning request prune harder than the recording
did, and what makes partial-with-pruning-0 identical to full recording.

- ``random``: entry kept iff u >= p, with u ~ U[0,1) drawn from a generator seeded by
  (seed, epoch, batch, tensor name). Drawn on the CPU so CPU and CUDA runs agree, and
  regenerated on demand, so no index is stored.
- ``magnitude``: the top-k entries of |Delta| with k = round((1-p) * numel); the flat
  indices are stored next to the values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from unlearning_core.errors import RunError

MaskKind = Literal["random", "magnitude"]
MASK_KINDS: tuple[str, ...] = ("random", "magnitude")


@dataclass(frozen=True)
class PruneSchedule:
    """Pruning shares at the first and last layer; layers between are interpolated."""

    first: float
    last: float

    def __post_init__(self) -> None:
        for name, value in (("first", self.first), ("last", self.last)):
            if not 0.0 <= value < 1.0:
                raise RunError(f"prune-{name} must be in [0, 1), got {value}")

    def layer_shares(self, n_layers: int) -> list[float]:
        if n_layers <= 1:
            return [self.first] * n_layers
        step = (self.last - self.first) / (n_layers - 1)
        return [self.first + i * step for i in range(n_layers)]

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


def _generator(seed: int, epoch: int, batch: int, tensor_name: str) -> torch.Generator:
    digest = hashlib.blake2b(
        f"{seed}:{epoch}:{batch}:{tensor_name}".encode(), digest_size=8
    ).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


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
