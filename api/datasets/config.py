"""Settings of the datasets domain (``LETHE_*``; pydantic-settings, split per domain)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.config import get_settings


class DatasetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    upload_dir: Path | None = Field(
        default=None,
        description="Folder where manifests uploaded through `POST /datasets/upload` are kept "
        "(default: `uploads/` beside a local blob store, else `var/uploads`)",
    )


def upload_dir() -> Path:
    """Where uploaded manifests live; every process that trains must be able to read it."""
    configured = DatasetSettings().upload_dir
    if configured is not None:
        return configured.expanduser().resolve()
    store = get_settings().blob_store
    if not store.startswith("s3://"):
        return (Path(store).expanduser().resolve().parent / "uploads").resolve()
    return Path("var/uploads").resolve()
