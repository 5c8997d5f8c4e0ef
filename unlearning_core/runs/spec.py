"""What a training run was, saved as ``run.json`` beside its blobs.

Everything needed to rebuild the model, reload the dataset, decode the updates and retrain
from scratch with the same schedule lives here, so a run is self-describing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from unlearning_core.data import Dataset
from unlearning_core.recording import PruneSchedule, UpdateFormat
from unlearning_core.recording.masks import MaskKind
from unlearning_core.store import BlobRef
from unlearning_core.vocab import RecordMode, TrainingMethod


class BlobPointer(BaseModel):
    """A blob together with the sha256 it must still have when read."""

    model_config = ConfigDict(frozen=True)
    key: str
    sha256: str
    size: int

    @classmethod
    def of(cls, ref: BlobRef) -> BlobPointer:
        return cls(key=ref.key, sha256=ref.sha256, size=ref.size)

    def ref(self) -> BlobRef:
        return BlobRef(key=self.key, sha256=self.sha256, size=self.size)


class DatasetSpec(BaseModel):
    spec: str  # "digits", "fashion-mnist" or a path
    split_seed: int = 0
    test_fraction: float = 0.2
    subject_size: int | None = None
    #: Training samples left out (a compaction: every sample erased before it started).
    exclude_sample_ids: list[str] = Field(default_factory=list)

    def load(self) -> Dataset:
        """The dataset as this spec names it, excluded samples left out."""
        from unlearning_core.data import load_dataset

        data = load_dataset(
            self.spec, seed=self.split_seed, subject_size=self.subject_size,
            test_fraction=self.test_fraction,
        )
        return data.without(self.exclude_sample_ids)


class TrainingSpec(BaseModel):
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    concentrate_class: int | None = None
    # ... or the samples of these subjects (a subject whose data arrived during part of training)
    concentrate_subjects: list[str] | None = None
    concentrate_share: float | None = None
    # Accuracy timeline: evaluate every N steps (None: about 20 points per run; 0: off).
    timeline_every: int | None = Field(default=None, ge=0)


class RecordingSpec(BaseModel):
    mode: RecordMode
    mask: MaskKind = "random"
    mask_seed: int = 0
    prune_first: float = 0.0
    prune_last: float = 0.0
    dtype: str = "float32"

    def update_format(self, shapes: Mapping[str, tuple[int, ...]]) -> UpdateFormat:
        """How updates recorded under this spec are laid out, for tensors of ``shapes``."""
        names = list(shapes)
        shares = (
            PruneSchedule(self.prune_first, self.prune_last).tensor_shares(names)
            if self.mode == "partial"
            else dict.fromkeys(names, 0.0)
        )
        return UpdateFormat(
            mode=self.mode,
            mask=self.mask,
            mask_seed=self.mask_seed,
            dtype=self.dtype,
            shares=shares,
            shapes={k: tuple(v) for k, v in shapes.items()},
        )


class SisaSpec(BaseModel):
    """Shards x slices, and how the shard models' outputs are combined by default."""

    shards: int = Field(ge=1, le=256)
    slices: int = Field(ge=1, le=256)
    aggregation: str = "softmax"  # softmax | vote
    by_subject: bool = False  # all samples of a subject in one shard and slice


class LineageOrigin(BaseModel):
    """Where a compaction run's lineage comes from: the run and version it replaces, and
    what it left out. Its first version continues the model's numbering."""

    run_id: str  # the lineage it replaces
    version: int  # that lineage's head when the compaction was asked for
    first_version: int  # the number of this run's first version (version + 1)
    excluded_samples: int  # samples left out that the replaced lineage had trained on
    trigger: str  # what asked for it (deadline, requests, subtracted_share, accuracy_drop, manual)


class RunResults(BaseModel):
    steps: int  # optimizer steps
    samples_processed: int | None = None
    train_seconds: float
    stall_seconds: float
    storage_bytes: int
    device: str


class RunSpec(BaseModel):
    """Contents of ``runs/<run_id>/run.json``."""

    format: int = 1
    method: TrainingMethod = TrainingMethod.AMNESIAC  # what the run prepares for
    run_id: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    dataset: DatasetSpec
    training: TrainingSpec
    recording: RecordingSpec
    sisa: SisaSpec | None = None
    tensors: dict[str, list[int]]  # float tensors of the state dict, in depth order
    results: RunResults
    initial_weights: BlobPointer
    trained_weights: BlobPointer
    samples: BlobPointer
    index: BlobPointer
    updates: BlobPointer
    timeline: BlobPointer | None = None  # timeline/train.json (accuracy during training)
    origin: LineageOrigin | None = None  # set on a compaction run
