"""Request and response bodies of the datasets endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Names of datasets and models: they appear in URLs, run ids and blob keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

#: The largest seed any seed field takes. numpy's generators refuse negative seeds, torch's
#: refuse seeds of 2**64 and more (and SISA derives per-shard seeds from it), and the
#: ``split_seed`` column is a PostgreSQL ``integer``: 0 .. 2**31 - 1 fits them all.
MAX_SEED = 2**31 - 1

#: The largest ``subject_size`` (a PostgreSQL ``integer`` column); any size at least the
#: number of training samples already puts them all in one subject.
MAX_SUBJECT_SIZE = 2**31 - 1

#: A dataset source is a built-in name or a server path: no NUL character (no path has one).
SOURCE_PATTERN = r"^[^\x00]*$"


class DatasetCreate(BaseModel):
    """Register a dataset the server can read: a built-in name or a server-side path."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [{"name": "digits", "source": "digits", "subject_size": 10}]
        },
    )

    name: str = Field(
        pattern=NAME_PATTERN, description="Unique name; letters, digits, '.', '_', '-'"
    )
    source: str = Field(
        min_length=1,
        max_length=1024,
        pattern=SOURCE_PATTERN,
        description="`digits`, `fashion-mnist`, an installed dataset plug-in (entry-point group "
        "`lethe.datasets`), or a path on the server under LETHE_DATASET_ROOTS: a folder of idx "
        "files, an ImageFolder tree or an `.npz` manifest",
    )
    subject_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SUBJECT_SIZE,
        description="Group consecutive training samples into data subjects of this size",
    )
    subject_map: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=SOURCE_PATTERN,
        description="A CSV (`sample_id,subject_id` header) or Parquet file on the server, under "
        "LETHE_DATASET_ROOTS, naming every training sample's data subject (instead of subject_size)",
    )
    split_seed: int = Field(
        default=0,
        ge=0,
        le=MAX_SEED,
        description="Seed of the train/test split (datasets without a test set): 0 to 2147483647",
    )
    test_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Test share where the data has no test set. Every class keeps at least one "
        "training sample; a share so small that no sample goes to the test set is refused (422)",
    )


class DatasetOut(BaseModel):
    name: str
    source: str
    num_classes: int
    num_samples: int = Field(description="Training samples (each one a `Sample` row)")
    split_seed: int
    test_fraction: float
    subject_size: int | None
    samples: int = Field(description="Training samples registered")
    subjects: int = Field(description="Distinct data subjects among them")
    erased: int = Field(description="Samples tombstoned by completed erasure requests")
    info: dict[str, Any] = Field(description="in_channels, image_size, num_test, class_names, ...")
    created_at: datetime
