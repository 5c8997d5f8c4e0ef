"""Request and response bodies of the datasets endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Names of datasets and models: they appear in URLs, run ids and blob keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class DatasetCreate(BaseModel):
    """Register a dataset the server can read: a built-in name or a server-side path."""

    model_config = ConfigDict(
        extra="forbid",
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
        description="`digits`, `fashion-mnist`, or a path on the server: a folder of idx files, "
        "an ImageFolder tree or an `.npz` manifest",
    )
    subject_size: int | None = Field(
        default=None,
        ge=1,
        description="Group consecutive training samples into data subjects of this size",
    )
    split_seed: int = Field(
        default=0, description="Seed of the train/test split (datasets without a test set)"
    )
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Test share where the data has no test set"
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
