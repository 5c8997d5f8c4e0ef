"""Service settings, read from ``LETHE_*`` environment variables (pydantic-settings).

The defaults are the embedded ones of ``make run``: a SQLite file and a blob folder under
``./var/``, no broker server. Production points ``LETHE_DATABASE_URL`` at PostgreSQL and
``LETHE_BLOB_STORE`` at ``s3://bucket/prefix`` (MinIO; ``LETHE_S3_*`` settings).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore", env_ignore_empty=True)

    database_url: str = Field(
        default="sqlite:///var/lethe.db",
        description="SQLAlchemy URL; postgresql+psycopg://... in production",
    )
    blob_store: str = Field(default="var/blobs", description="local directory or s3://bucket/prefix")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = Field(default=None, description="folder holding fashion-mnist/ etc.")
    require_approval: bool = False
    bootstrap_admin_key: SecretStr | None = None
    device: str = "auto"
    erasure_due_days: int = Field(default=30, ge=1, description="GDPR Art. 12(3): one month")
    method_ranking: Path = Field(
        default=Path(__file__).resolve().parents[1] / "bench" / "results" / "judge.json",
        description="The judge's result file whose ranking `method: auto` follows (bench/judge.py); "
        "missing: auto uses each model's default method",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    embedded_worker: bool = Field(default=True, description="run jobs in a thread of the API process")
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    seed_demo: bool = True
    log_level: str = "INFO"
    # Observability and the dashboard (api/observability, api/dashboard).
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per log line; text: for a terminal"
    )
    metrics_public: bool = Field(
        default=False, description="serve /metrics without an admin key (a private scrape network)"
    )
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="a Celery worker serves its job metrics on this port"
    )
    worker_metrics_addr: str = Field(default="127.0.0.1", description="address of the worker's metrics port")
    session_secret: SecretStr | None = Field(
        default=None,
        description="signs the dashboard's session cookie; random per process when unset (set it for several API replicas)",
    )
    session_cookie_secure: bool = Field(
        default=False, description="send the dashboard cookie over HTTPS only (set behind TLS)"
    )
    session_max_age_seconds: int = Field(default=8 * 3600, ge=60, description="dashboard login lifetime")
    # Distributed workers (Celery). Unset broker_url: the embedded mode, no broker server.
    broker_url: str | None = Field(
        default=None,
        description="Celery broker, e.g. redis://127.0.0.1:6379/0; unset: embedded mode (no broker)",
    )
    visibility_timeout_seconds: int = Field(
        default=7200,
        ge=60,
        description="Redis redelivers an unacknowledged task after this long: above the longest job",
    )
    job_stale_seconds: int = Field(
        default=120,
        ge=1,
        description="a running job whose heartbeat is older than this is taken as abandoned",
    )
    dispatch_interval_seconds: float = Field(
        default=10,
        ge=0,
        description="how often each worker's dispatcher re-enqueues pending and abandoned work (0: never)",
    )
    work_queue: str = Field(
        default="cpu",
        description="queue that training and unlearning tasks go to: cpu, or gpu where the workers have GPUs",
    )
    compact_within_days: float | None = Field(
        default=21, gt=0, le=366,
        description="default policy of new models: the longest a request may stay approximate (days; unset: off)",
    )
    compact_after_requests: int | None = Field(
        default=100, ge=1, description="default policy: compact once this many requests are approximate only"
    )
    compact_max_subtracted_share: float | None = Field(
        default=None, gt=0, le=1,
        description="default policy: compact once this share of a lineage's recorded steps was subtracted",
    )
    compact_max_accuracy_drop: float | None = Field(
        default=0.02, ge=0, le=1,
        description="default policy: compact once test accuracy fell this far below the lineage's first version",
    )
    withdraw_grace_hours: float = Field(
        default=24, ge=0, le=24 * 366,
        description="how long a version superseded by an erasure stays downloadable (serving fleets roll over) before it answers 410",
    )
    purge_interval_seconds: float = Field(
        default=60, ge=0,
        description="how often each worker deletes blobs that hold erased data and that nothing needs (0: never)",
    )
    compaction_retry_seconds: float = Field(
        default=3600, ge=0,
        description="after a compaction failed, how long before a trigger may ask for the next one",
    )
    task_max_retries: int = Field(
        default=5, ge=0, description="retries (exponential backoff) of a task hit by a transient fault"
    )
    # Webhooks (api/webhooks): deliveries retried with backoff, then failed.
    webhook_max_attempts: int = Field(
        default=10, ge=1, le=100, description="attempts of a webhook delivery before it is failed"
    )
    webhook_timeout_seconds: float = Field(
        default=10, gt=0, le=120, description="how long one webhook delivery POST may take"
    )
    receipt_signing_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 private key that signs erasure receipts (PEM, or base64 of the raw 32 "
        "bytes); every API replica must share it; unset: receipt_key_file",
    )
    receipt_key_file: Path = Field(
        default=Path("var/receipt-signing-key.pem"),
        description="where the receipt signing key is kept when receipt_signing_key is unset "
        "(created, mode 0600, on first use)",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
