"""What a training run was, saved as ``run.json`` beside its blobs.

Everything needed to rebuild the model, reload the dataset, decode the updates and retrain
from scratch with the same schedule lives here, so a run is self-describing.

A run recorded from the user's own training loop (:func:`unlearning_core.record_training`)
has a ``loop`` section instead of a built-in architecture and usually no ``dataset``: its
model is rebuilt from the factory it names, its sample ids are the user's own, and a
dataset reference (a registered dataset, a subject map) may be added later.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from unlearning_core.data import Dataset
from unlearning_core.recording import PruneSchedule, UpdateFormat
from unlearning_core.recording.masks import DEFAULT_MASK, MaskKind
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
    #: A CSV or Parquet file naming each sample's subject (instead of ``subject_size``).
    subject_map: str | None = None
    #: Training samples left out (a compaction: every sample erased before it started).
    exclude_sample_ids: list[str] = Field(default_factory=list)

    def load(self) -> Dataset:
        """The dataset as this spec names it, excluded samples left out."""
        from unlearning_core.data import load_dataset

        data = load_dataset(
            self.spec, seed=self.split_seed, subject_size=self.subject_size,
            test_fraction=self.test_fraction, subject_map=self.subject_map,
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


#: Version of the recorded-update layout that new runs write. 1: runs written before fixed
#: masks existed (their ``run.json`` has no ``recording.format``): masks ``random`` and
#: ``magnitude`` only. 2: adds ``fixed`` masks (packed steps, ``mask_index``); ``random`` and
#: ``magnitude`` blobs are laid out exactly as in 1, so both versions decode the same way.
#: 3: adds ``skip_layers`` (first layers not recorded) and ``group_steps`` (one recorded step
#: per K optimizer steps: their summed update, the union of their samples in the index).
RECORDING_FORMAT = 3


class RecordingSpec(BaseModel):
    #: layout version (see RECORDING_FORMAT); a run.json without it is version 1
    format: int = RECORDING_FORMAT
    mode: RecordMode
    mask: MaskKind = DEFAULT_MASK
    mask_seed: int = 0
    prune_first: float = 0.0
    prune_last: float = 0.0
    dtype: str = "float32"
    #: A partial run with fixed masks: its stored masks (kept flat positions and their draws
    #: per tensor, ``mask.safetensors``), written once when recording starts.
    mask_index: BlobPointer | None = None
    #: partial runs: the first N layers (depth order) are not recorded at all (share 1.0)
    skip_layers: int = Field(default=0, ge=0, le=10_000)
    #: one recorded step (blob) per K optimizer steps of an epoch: their summed update, so an
    #: erasure subtracts whole groups (every step of a group that held a forget sample)
    group_steps: int = Field(default=1, ge=1, le=100_000)
    #: ``zlib``: each blob compressed (lossless; fewer bytes, slower to write and to read back)
    compression: Literal["none", "zlib"] = "none"
    #: what ``--max-storage`` asked for and what it chose (None: no budget was given)
    budget: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _known_layout(self) -> RecordingSpec:
        if not 1 <= self.format <= RECORDING_FORMAT:
            raise ValueError(
                f"recording format {self.format} is newer than this Lethe reads (up to "
                f"{RECORDING_FORMAT}); upgrade Lethe"
            )
        if self.mask == "fixed" and self.format < 2:
            raise ValueError("fixed masks need recording format 2")
        if (self.skip_layers or self.group_steps > 1 or self.compression != "none") and self.format < 3:
            raise ValueError("skip_layers, group_steps and compression need recording format 3")
        if self.skip_layers and self.mode != "partial":
            raise ValueError("skip_layers prunes layers away: it needs --record partial")
        return self

    @property
    def schedule(self) -> PruneSchedule:
        """The recorded pruning (partial runs)."""
        return PruneSchedule(self.prune_first, self.prune_last, skip=self.skip_layers)

    def update_format(self, shapes: Mapping[str, tuple[int, ...]]) -> UpdateFormat:
        """How updates recorded under this spec are laid out, for tensors of ``shapes``."""
        names = list(shapes)
        shares = (
            self.schedule.tensor_shares(names)
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
            compression=self.compression,
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
    stall_seconds: float  # the training thread inside the recorder
    #: of which: waiting because the recorder's bounded queue was full (writers behind)
    backpressure_seconds: float = 0.0
    storage_bytes: int
    device: str


class LoopSpec(BaseModel):
    """How a run recorded from the user's own training loop was made (``record_training``)."""

    #: What rebuilds the model: ``"pkg.module:callable"``, an entry point of ``lethe.models``
    #: or a built-in model name, called with ``model_kwargs``.
    model_factory: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Classes of the optimizers whose steps changed the model (``torch.optim.adamw.AdamW``).
    optimizers: list[str] = Field(default_factory=list)
    #: Their hyper-parameters at the start (first parameter group of the first optimizer).
    optimizer_settings: dict[str, Any] = Field(default_factory=dict)
    #: ``optimizer.step()`` calls that took effect inside recorded steps.
    optimizer_steps: int = 0
    #: Recorded steps in which no optimizer step took effect (a GradScaler skipping a step
    #: with inf/nan gradients). Their update holds only what the forward pass changed
    #: (BatchNorm statistics); for a model without such buffers it is zero.
    skipped_steps: list[int] = Field(default_factory=list)
    #: Steps that hold no sample: the model changed after the last recorded step.
    unattributed_steps: list[int] = Field(default_factory=list)
    #: ``rec.step`` windows merged into the following optimizer step (gradient
    #: accumulation written one window per micro-batch).
    merged_windows: int = 0
    #: Parameters frozen (``requires_grad=False``) for the whole run: not recorded, checked
    #: unchanged at the end.
    frozen_tensors: list[str] = Field(default_factory=list)
    #: Processes that trained (DistributedDataParallel); rank 0 recorded every step.
    world_size: int = 1
    torch_version: str = ""
    #: The user's own JSON metadata, kept as given.
    metadata: dict[str, Any] = Field(default_factory=dict)


class RunSpec(BaseModel):
    """Contents of ``runs/<run_id>/run.json``."""

    format: int = 1
    method: TrainingMethod = TrainingMethod.AMNESIAC  # what the run prepares for
    run_id: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str  # a built-in architecture, or the model factory of a ``loop`` run
    # The built-in architecture's sizes (None on a ``loop`` run: its factory knows them).
    num_classes: int | None = None
    in_channels: int | None = None
    image_size: tuple[int, int] | None = None
    #: None: the run names no dataset (recorded from the user's own loop); only its sample
    #: ids are known (``samples.json``).
    dataset: DatasetSpec | None = None
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
    loop: LoopSpec | None = None  # set on a run recorded from the user's own training loop

    # ``run.json`` is written with sorted keys, which would turn ``tensors`` into name order;
    # the depth order (what per-layer pruning interpolates over) travels beside it as a list.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def tensor_order(self) -> list[str]:
        """The names of ``tensors`` in depth order, as written to ``run.json``."""
        return list(self.tensors)

    @model_validator(mode="before")
    @classmethod
    def _recording_format(cls, data: Any) -> Any:
        """A ``run.json`` written before recording formats were versioned is version 1,
        whose mask default was ``random``."""
        if isinstance(data, dict) and isinstance(data.get("recording"), dict):
            rec = data["recording"]
            if "format" not in rec:
                data = {**data, "recording": {"mask": "random", **rec, "format": 1}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _depth_order(cls, data: Any) -> Any:
        """Put ``tensors`` back in depth order when ``run.json`` records it (a run written
        before it did keeps the order its file has)."""
        if isinstance(data, dict) and isinstance(data.get("tensor_order"), list) and isinstance(data.get("tensors"), dict):
            order, tensors = data["tensor_order"], data["tensors"]
            if sorted(order) == sorted(tensors):
                data = {**data, "tensors": {k: tensors[k] for k in order}}
            data = {k: v for k, v in data.items() if k != "tensor_order"}
        return data
