"""Seeded batches of the forget and retained sets for the fine-tune methods that use both.

NegGrad+, SCRUB, SalUn and l1-sparse step on batches of the forget set, of the retained
data or of both. :class:`BatchCycler` hands out batches of one sample set in seeded,
shuffled passes (every sample once per pass, the last batch of a pass possibly smaller),
so "one epoch over the forget set" means what it says and a run is a function of the
seed. A set small enough stays on the loop's device; a larger one (a big retained set on
a GPU) stays where it is and each batch is copied over, so memory does not grow with the
training set.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unlearning_core.data import SampleSet
from unlearning_core.errors import MethodError

#: Sample sets up to this many bytes of images are moved to the device once.
ON_DEVICE_BYTES = 256 * 2**20

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchCycler:
    """Batches of ``images``/``labels`` in seeded, shuffled passes over the whole set."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        rng: np.random.Generator,
    ) -> None:
        if len(labels) == 0:
            raise MethodError("no samples to draw batches from")
        resident = images.element_size() * images.nelement() <= ON_DEVICE_BYTES
        self.images = images.to(device) if resident else images
        self.labels = labels.to(device) if resident else labels
        self.device = device
        self.size = max(1, min(batch_size, len(labels)))
        self._rng = rng
        self._order = np.empty(0, dtype=np.int64)
        self._at = 0

    @classmethod
    def of(
        cls,
        samples: SampleSet,
        *,
        batch_size: int,
        device: torch.device,
        rng: np.random.Generator,
        labels: torch.Tensor | None = None,
    ) -> BatchCycler:
        """A cycler over a sample set (``labels`` replaces its labels, e.g. flipped ones)."""
        return cls(
            samples.images,
            samples.labels if labels is None else labels,
            batch_size=batch_size,
            device=device,
            rng=rng,
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def batches_per_pass(self) -> int:
        return math.ceil(len(self) / self.size)

    def take(self, count: int) -> Batch:
        """The next ``count`` samples of the current pass (a new shuffled pass when done)."""
        if self._at >= len(self._order):
            self._order = self._rng.permutation(len(self))
            self._at = 0
        pos = self._order[self._at : self._at + count]
        self._at += len(pos)
        idx = torch.as_tensor(pos, dtype=torch.long, device=self.images.device)
        return (
            self.images[idx].to(self.device, non_blocking=True),
            self.labels[idx].to(self.device, non_blocking=True),
        )

    def next(self) -> Batch:
        """The next batch of ``batch_size`` samples (fewer at the end of a pass)."""
        return self.take(self.size)


def retained_samples(ctx_retain: SampleSet, method: str) -> SampleSet:
    """The retained samples, refusing an empty set (the method learns from them)."""
    if len(ctx_retain) == 0:
        raise MethodError(
            f"method {method!r} needs retained data, but the forget set holds every "
            "training sample still in use"
        )
    return ctx_retain
