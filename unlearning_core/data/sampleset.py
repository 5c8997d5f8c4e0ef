"""In-memory sample containers with stable ids, shared by every loader and method.

Every sample keeps a string id that never changes (erasure requests name samples by it)
and an optional data-subject id (requests may name a subject instead of samples).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from unlearning_core.errors import DatasetError, ForgetSetError


@dataclass(frozen=True)
class SampleSet:
    """Images as one float32 tensor ``N x C x H x W`` (already normalised), labels ``N`` int64."""

    images: torch.Tensor
    labels: torch.Tensor
    sample_ids: tuple[str, ...]
    subject_ids: tuple[str | None, ...]
    _positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4:
            raise DatasetError(f"images must be N x C x H x W, got shape {tuple(self.images.shape)}")
        if self.labels.shape != (n,) or len(self.sample_ids) != n or len(self.subject_ids) != n:
            raise DatasetError(
                f"images ({n}), labels ({self.labels.shape[0] if self.labels.ndim else '?'}), "
                f"sample ids ({len(self.sample_ids)}) and subject ids ({len(self.subject_ids)}) "
                "must have the same length"
            )
        positions = {sid: i for i, sid in enumerate(self.sample_ids)}
        if len(positions) != n:
            raise DatasetError("sample ids must be unique")
        object.__setattr__(self, "_positions", positions)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, positions: Sequence[int] | np.ndarray | torch.Tensor) -> SampleSet:
        """Samples at the given positions, in that order (ids travel with them)."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        idx = pos.tolist()
        return SampleSet(
            images=self.images[pos],
            labels=self.labels[pos],
            sample_ids=tuple(self.sample_ids[i] for i in idx),
            subject_ids=tuple(self.subject_ids[i] for i in idx),
        )

    def positions_of(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Positions of the given ids; an unknown id is a :class:`ForgetSetError` naming it."""
        out = []
        for sid in sample_ids:
            try:
                out.append(self._positions[sid])
            except KeyError:
                raise ForgetSetError(f"sample id {sid!r} is not in this dataset") from None
        return np.asarray(out, dtype=np.int64)

    def positions_of_class(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels.numpy() == label).astype(np.int64)

    def positions_of_subject(self, subject_id: str) -> np.ndarray:
        return np.asarray(
            [i for i, s in enumerate(self.subject_ids) if s == subject_id], dtype=np.int64
        )

    def with_subjects(self, subject_ids: Sequence[str | None]) -> SampleSet:
        return SampleSet(self.images, self.labels, self.sample_ids, tuple(subject_ids))


def consecutive_subjects(n: int, subject_size: int) -> tuple[str, ...]:
    """Subjects ``subject-0000``, ``subject-0001``, ... of ``subject_size`` consecutive samples."""
    if subject_size < 1:
        raise DatasetError(f"subject size must be at least 1, got {subject_size}")
    return tuple(f"subject-{i // subject_size:04d}" for i in range(n))


@dataclass(frozen=True)
class Dataset:
    """A train/test pair plus what a model needs to know to fit it."""

    name: str
    train: SampleSet
    test: SampleSet
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def without(self, sample_ids: Iterable[str]) -> Dataset:
        """The same dataset with those training samples left out (ids not in it are
        ignored: they may have been excluded before, or belong to another dataset). A
        compaction trains on this: the retained data, every erased sample excluded."""
        drop = set(sample_ids)
        if not drop:
            return self
        keep = [i for i, sid in enumerate(self.train.sample_ids) if sid not in drop]
        if len(keep) == len(self.train):
            return self
        return Dataset(self.name, self.train.subset(keep), self.test, self.num_classes, self.class_names)

    def with_subject_size(self, subject_size: int | None) -> Dataset:
        """Name training subjects as consecutive groups, as ``--subject-size`` asks."""
        if subject_size is None:
            return self
        train = self.train.with_subjects(consecutive_subjects(len(self.train), subject_size))
        return Dataset(self.name, train, self.test, self.num_classes, self.class_names)
