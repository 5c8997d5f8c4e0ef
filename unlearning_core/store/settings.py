"""Connection settings for the S3 blob store, read from ``LETHE_S3_*`` environment variables.

The defaults match a local MinIO started for development (``127.0.0.1:9000``, user
``lethe``); production sets at least ``LETHE_S3_ENDPOINT``, ``LETHE_S3_ACCESS_KEY`` and
``LETHE_S3_SECRET_KEY``. The secret is a :class:`~pydantic.SecretStr` so it never shows up
in logs, reprs or error messages.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class S3Settings(BaseSettings):
    """Where and how to reach the S3-compatible server (MinIO in production)."""

    model_config = SettingsConfigDict(env_prefix="LETHE_S3_", extra="ignore")

    endpoint: str = Field(
        default="127.0.0.1:9000",
        description="host:port of the S3 API (an http:// or https:// prefix also sets secure)",
    )
    access_key: str = "lethe"
    secret_key: SecretStr = SecretStr("lethe-secret")
    secure: bool = Field(default=False, description="use HTTPS")
    region: str = "us-east-1"
    create_bucket: bool = Field(
        default=True, description="create the bucket on first use if it does not exist"
    )
    retries: int = Field(
        default=3,
        ge=0,
        description="urllib3 retries for connection errors and 5xx answers (with backoff)",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect timeout")
    read_timeout_s: float = Field(
        default=120.0, gt=0, description="socket read timeout; large weights stream in chunks"
    )
