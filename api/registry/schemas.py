"""Request and response bodies of the model registry and of training through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.datasets.schemas import MAX_SEED, NAME_PATTERN

# What a training method records (re-exported for the registry's flows) and the unlearning
# method its erasure requests use by default (a request may name any method the recorded
# run supports): unlearning_core's vocabulary, defined once in unlearning_core.vocab.
from unlearning_core.compaction import CompactionPolicy
from unlearning_core.methods import get_method, method_names
from unlearning_core.methods.auto import AUTO
from unlearning_core.models import is_registered, model_names
from unlearning_core.vocab import DEFAULT_UNLEARN_METHOD, Guarantee, TrainingMethod
from unlearning_core.vocab import RECORD_OF_METHOD as RECORD_OF_METHOD


class ModelCreate(BaseModel):
    """Train a model on a registered dataset; the knobs are those of ``lethe train``."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "name": "demo-digits",
                    "dataset": "digits",
                    "architecture": "small-cnn",
                    "method": "partial-amnesiac",
                    "epochs": 2,
                }
            ]
        },
    )

    name: str = Field(
        pattern=NAME_PATTERN, description="Unique model name; letters, digits, '.', '_', '-'"
    )
    dataset: str = Field(pattern=NAME_PATTERN, description="Name of a registered dataset")
    architecture: str = Field(description="A registered architecture: " + ", ".join(model_names()))
    method: TrainingMethod = Field(
        default=TrainingMethod.PARTIAL_AMNESIAC,
        description="What training prepares for: plain (nothing recorded), amnesiac (full per-step updates), "
        "partial-amnesiac (pruned updates) or sisa (shards and slice checkpoints)",
    )
    unlearn_method: str | None = Field(
        default=None,
        description="Default unlearning method of erasure requests on this model, or `auto` (each "
        "request's method picked from the last judge run, methods/auto.py) "
        "[default: retrain for plain, amnesiac for amnesiac, partial-amnesiac for partial-amnesiac, sisa for sisa]",
    )
    erasure_policy: CompactionPolicy | None = Field(
        default=None,
        description="When the model is compacted (retrained without every erased sample, "
        "the exact tier); default: the settings' LETHE_COMPACT_* values. Change it later with "
        "PATCH /models/{name}/policy",
    )
    epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=65536)
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    momentum: float = Field(default=0.9, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = Field(
        default=0,
        ge=0,
        le=MAX_SEED,
        description="Seed of initialisation, batch order and update masks: 0 to 2147483647",
    )
    prune_first: float = Field(
        default=0.99,
        ge=0.0,
        lt=1.0,
        description="Pruning share of the first layer's recorded updates",
    )
    prune_last: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="Pruning share of the last layer's recorded updates",
    )
    mask: Literal["fixed", "random", "magnitude"] = Field(
        default="fixed",
        description="How partial recording prunes: fixed (one mask per layer, stored once; steps "
        "store only the kept values), random (a new mask per step) or magnitude",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="Precision of stored updates (summed in float32)"
    )
    skip_layers: int = Field(
        default=0, ge=0, le=10_000,
        description="Partial recording: the first N layers are not recorded at all",
    )
    group_steps: int = Field(
        default=1, ge=1, le=100_000,
        description="One recorded update per K optimizer steps of an epoch (their sum)",
    )
    compression: Literal["none", "zlib"] = Field(
        default="none", description="zlib: each stored update compressed (lossless; fewer bytes, slower)"
    )
    max_storage_bytes: int | None = Field(
        default=None, gt=0,
        description="Budget for the recorded updates: float16, then coarser group_steps, until "
        "the estimate fits; the training fails with the estimate if nothing does",
    )
    shards: int = Field(default=8, ge=1, le=256, description="SISA: shards")
    slices: int = Field(default=4, ge=1, le=256, description="SISA: slices per shard")
    aggregation: Literal["softmax", "vote"] = Field(
        default="softmax", description="SISA: how shard outputs combine"
    )
    sisa_by_subject: bool = Field(
        default=False, description="SISA: keep a data subject's samples in one shard and slice"
    )
    concentrate: str | None = Field(
        default=None,
        max_length=64,
        description="K:Q puts every training sample of class K into a share Q of the batches",
    )

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        known = model_names()
        if value not in known and not is_registered(value):  # installed since: read again
            raise ValueError(f"unknown architecture {value!r}; known: {', '.join(known)}")
        return value

    @field_validator("concentrate")
    @classmethod
    def _concentrate(cls, value: str | None) -> str | None:
        if value is None:
            return None
        klass, sep, share = value.partition(":")
        try:
            k, q = int(klass), float(share)
        except ValueError:
            k, q = -1, -1.0
        if not sep or k < 0 or not 0.0 < q <= 1.0:
            raise ValueError(
                f"concentrate takes CLASS:SHARE such as 3:0.2 (share in (0, 1]), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _skip_layers_need_partial(self) -> ModelCreate:
        """``skip_layers`` prunes whole layers away, which only a partial recording does; the
        CLI refuses ``--skip-layers`` without ``--record partial`` the same way, rather than
        training a run that records what the caller asked to leave out."""
        if self.skip_layers and RECORD_OF_METHOD[self.method] != "partial":
            raise ValueError(
                f"skip_layers prunes layers away: it needs a method that records partial updates "
                f"(partial-amnesiac), not {str(self.method)!r}, which records "
                f"{RECORD_OF_METHOD[self.method]}"
            )
        return self

    @model_validator(mode="after")
    def _unlearn_method(self) -> ModelCreate:
        if self.unlearn_method is None:
            self.unlearn_method = DEFAULT_UNLEARN_METHOD[self.method]
        if self.unlearn_method == AUTO:  # each request's method is picked then (methods/auto.py)
            return self
        if self.unlearn_method not in method_names():
            raise ValueError(
                f"unknown unlearn_method {self.unlearn_method!r}; known: {', '.join(method_names())}"
            )
        impl = get_method(self.unlearn_method)
        if self.method not in impl.trained_with:
            raise ValueError(
                f"unlearn_method {self.unlearn_method!r} cannot work from a model trained with method "
                f"{str(self.method)!r}; it needs {' or '.join(impl.trained_with)}"
            )
        return self

    def concentration(self) -> tuple[int | None, float | None]:
        if self.concentrate is None:
            return None, None
        klass, _, share = self.concentrate.partition(":")
        return int(klass), float(share)


class ModelImport(BaseModel):
    """Register a run recorded elsewhere (``unlearning_core.record_training``) as a model."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"name": "claims-net", "run_id": "claims-2026-12", "dataset": "claims"}]},
    )

    name: str = Field(pattern=NAME_PATTERN, description="The model's name in your tenant")
    run_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="The run, complete under `runs/<run_id>/` of your tenant's store "
        "(`<LETHE_BLOB_STORE>/tenants/<tenant>`): recorded there, or copied there",
    )
    dataset: str = Field(
        pattern=NAME_PATTERN,
        description="Your registered dataset holding every sample id of the run (its subjects "
        "resolve erasure requests; its test split evaluates versions)",
    )
    unlearn_method: str | None = Field(
        default=None, description="Default method of erasure requests (default: the recording's)"
    )
    erasure_policy: CompactionPolicy | None = Field(
        default=None, description="When the model is compacted (fields not given: the service defaults)"
    )
    atol: float = Field(
        default=1e-4, gt=0.0, le=1.0,
        description="Tolerance of the check that the initial weights plus every recorded update "
        "give the final weights (full recordings)",
    )


class TrainingRunOut(BaseModel):
    run_id: str
    kind: str = Field(description="train (the first training) or compaction")
    status: str = Field(description="queued | running | completed | failed")
    error: str | None
    store_url: str
    config: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


class ModelSummary(BaseModel):
    name: str
    dataset: str
    architecture: str
    method: str = Field(description="Training method")
    unlearn_method: str = Field(description="Default unlearning method of erasure requests")
    status: str = Field(description="training | ready | failed")
    latest_version: int | None = Field(
        description="Number of the newest version; null until trained"
    )
    created_at: datetime


class ModelOut(ModelSummary):
    versions: int = Field(description="How many versions exist")
    erasure_policy: CompactionPolicy = Field(description="When the model is compacted")
    training: TrainingRunOut | None = Field(
        description="The training run (status, error, configuration)"
    )


class VersionOut(BaseModel):
    model: str
    number: int
    parent: int | None = Field(
        description="The version this one was derived from (null for the trained version 0)"
    )
    method: str = Field(
        description="`train` for version 0, `compact` for a compaction (a retraining without "
        "every erased sample, exact), else the unlearning method that produced it"
    )
    guarantee: Guarantee = Field(
        description="exact: the weights never saw the samples erased so far (a training, a "
        "compaction, retrain, SISA); approximate: their influence was removed by an estimate"
    )
    created_at: datetime
    weights_sha256: str
    size: int = Field(description="Size of the safetensors weights in bytes")
    metrics: dict[str, Any]
    withdraw_at: datetime | None = Field(
        default=None,
        description="when the version is (or was) withdrawn: a newer one answers erasure requests "
        "whose data it holds; from then on its weights and report answer 410 Gone",
    )
    withdrawn_at: datetime | None = Field(default=None, description="set once the withdrawal is in force")
    successor: int | None = Field(default=None, description="the version that superseded it")
    withdrawn_for: list[str] = Field(
        default_factory=list,
        description="ids of the erasure requests (of your tenant) whose answer superseded it",
    )
    answers: list[str] = Field(
        description="Ids of the erasure requests (of your tenant) this version answers"
    )
    weights_url: str
