"""The sample -> batches index of a run, stored as CSR arrays in safetensors.

Step s covers ``positions[ptr[s]:ptr[s+1]]`` (training-set positions). The inverse
(sample -> steps) is built in memory when needed: one argsort, no per-request scan of
update blobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearning_core.training.batching import BatchPlan


@dataclass(frozen=True)
class StepIndex:
    epochs: np.ndarray  # [S] int32
    batches: np.ndarray  # [S] int32
    ptr: np.ndarray  # [S+1] int64
    positions: np.ndarray  # [sum batch sizes] int32

    @classmethod
    def from_plan(cls, plan: BatchPlan, *, group_steps: int = 1) -> StepIndex:
        """One recorded step per batch, or per ``group_steps`` consecutive batches of an
        epoch (a grouped recording: the group holds the union of its batches' samples, and
        ``batches`` numbers the groups of the epoch)."""
        epochs, batches, sizes, chunks = [], [], [0], []
        for e, epoch in enumerate(plan):
            for g, start in enumerate(range(0, len(epoch), group_steps)):
                pos = np.concatenate([np.asarray(p, dtype=np.int32) for p in epoch[start : start + group_steps]])
                epochs.append(e)
                batches.append(g)
                sizes.append(len(pos))
                chunks.append(pos)
        return cls(
            epochs=np.asarray(epochs, dtype=np.int32),
            batches=np.asarray(batches, dtype=np.int32),
            ptr=np.cumsum(np.asarray(sizes, dtype=np.int64)),
            positions=np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int32),
        )

    @classmethod
    def from_steps(
        cls, epochs: Sequence[int], batches: Sequence[int], positions: Sequence[Sequence[int]]
    ) -> StepIndex:
        """Steps as recorded one by one (a user's own loop): each step's epoch, its number
        within the epoch, and the positions its batch held."""
        if not len(epochs) == len(batches) == len(positions):
            raise ValueError("epochs, batches and positions must have one entry per step")
        sizes = np.asarray([0, *(len(p) for p in positions)], dtype=np.int64)
        return cls(
            epochs=np.asarray(epochs, dtype=np.int32),
            batches=np.asarray(batches, dtype=np.int32),
            ptr=np.cumsum(sizes),
            positions=(
                np.concatenate([np.asarray(p, dtype=np.int32) for p in positions])
                if positions else np.empty(0, dtype=np.int32)
            ),
        )

    @property
    def n_steps(self) -> int:
        return len(self.epochs)

    def step_positions(self, step: int) -> np.ndarray:
        return self.positions[self.ptr[step] : self.ptr[step + 1]]

    @cached_property
    def _step_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_steps), np.diff(self.ptr))

    def steps_holding(self, positions: np.ndarray) -> np.ndarray:
        """Sorted unique steps whose batch held any of ``positions``."""
        hit = np.isin(self.positions, positions)
        return np.unique(self._step_of_entry[hit])

    def to_bytes(self) -> bytes:
        return st_save(
            {
                "epochs": torch.from_numpy(self.epochs),
                "batches": torch.from_numpy(self.batches),
                "ptr": torch.from_numpy(self.ptr),
                "positions": torch.from_numpy(self.positions),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> StepIndex:
        t = st_load(data)
        return cls(
            epochs=t["epochs"].numpy(),
            batches=t["batches"].numpy(),
            ptr=t["ptr"].numpy(),
            positions=t["positions"].numpy(),
        )
