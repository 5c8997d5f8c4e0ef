"""Settings of the datasets domain (``LETHE_*``; pydantic-settings, split per domain)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.config import get_settings


class DatasetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    upload_dir: Path | None = Field(
        default=None,
        description="Folder where manifests uploaded through `POST /datasets/upload` are kept "
        "(default: `uploads/` beside a local blob store, else `var/uploads`); each tenant's "
        "in its own sub-folder",
    )
    dataset_roots: str = Field(
        default="",
        description="Directories under which `POST /datasets` may register a server path, "
        "separated by `:` (empty: none; built-in datasets and uploads only). The upload folder "
        "is never one of them: uploads are registered only by uploading.",
    )


def dataset_roots() -> list[Path]:
    """The directories an API caller may register server paths under (resolved)."""
    raw = DatasetSettings().dataset_roots
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def upload_dir() -> Path:
    """Where uploaded manifests live; every process that trains must be able to read it."""
    configured = DatasetSettings().upload_dir
    if configured is not None:
        return configured.expanduser().resolve()
    store = get_settings().blob_store
    if not store.startswith("s3://"):
        return (Path(store).expanduser().resolve().parent / "uploads").resolve()
    return Path("var/uploads").resolve()


def tenant_upload_dir(tenant: str) -> Path:
    """``tenant``'s own upload folder: no tenant's manifest sits beside another's."""
    from api.auth.tenants import check_tenant

    return upload_dir() / check_tenant(tenant)
