"""``lethe serve``: everything ``make run`` needs on a fresh machine.

Migrates the database, makes sure an admin key exists, seeds the demo (digits with data
subjects and a partial-amnesiac ``demo-digits`` model) on first start, starts the embedded
worker thread (no broker server needed) and serves the API with uvicorn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings, get_settings
from api.database.core import get_sessionmaker
from api.database.migrate import upgrade

log = logging.getLogger("lethe.serve")

DEMO_DATASET = "digits"
DEMO_MODEL = "demo-digits"
ADMIN_KEY_FILE = Path("var/admin-key.txt")


def prepare_database(settings: Settings | None = None) -> sessionmaker[Session]:
    """Migrate to head (idempotent) and return the session factory."""
    settings = settings or get_settings()
    upgrade(settings.database_url)
    return get_sessionmaker()


def bootstrap_admin_key(session_factory: sessionmaker[Session], settings: Settings) -> str | None:
    """The admin key to show: ``LETHE_BOOTSTRAP_ADMIN_KEY`` if set, else one made on first
    start and kept (mode 0600) in ``var/admin-key.txt`` so later starts can show it too."""
    from api.auth.models import ApiKey
    from api.auth.service import create_key, ensure_key

    with session_factory() as db:
        if settings.bootstrap_admin_key is not None:
            key = settings.bootstrap_admin_key.get_secret_value()
            ensure_key(db, name="bootstrap-admin", scopes=["admin"], key=key)
            db.commit()
            return key
        if ADMIN_KEY_FILE.exists():
            return ADMIN_KEY_FILE.read_text().strip()
        has_admin = any("admin" in k.scopes for k in db.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))))
        if has_admin:
            return None
        _, key = create_key(db, name="first-admin", scopes=["admin"])
        db.commit()
    ADMIN_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    ADMIN_KEY_FILE.write_text(key + "\n")
    os.chmod(ADMIN_KEY_FILE, 0o600)
    return key


def seed_demo(session_factory: sessionmaker[Session], settings: Settings) -> None:
    """Digits with subjects of ten samples and a trained ``demo-digits`` model, once."""
    from api.auth.tenants import DEFAULT_TENANT
    from api.blobs import tenant_store
    from api.datasets.models import Dataset
    from api.datasets.service import register
    from api.registry.flows import train_model_now
    from api.registry.models import Model

    with session_factory() as db:  # the demo belongs to the default tenant, as the first admin key
        if db.scalar(select(Model).where(Model.tenant == DEFAULT_TENANT, Model.name == DEMO_MODEL)) is not None:
            return
        if db.scalar(select(Dataset).where(Dataset.tenant == DEFAULT_TENANT, Dataset.name == DEMO_DATASET)) is None:
            register(db=db, name=DEMO_DATASET, source="digits", subject_size=10, actor="seed")
    log.info("training the demo model %s (a few seconds)", DEMO_MODEL)
    model = train_model_now(
        session_factory=session_factory, store=tenant_store(DEFAULT_TENANT), device=settings.device, actor="seed",
        spec={
            "name": DEMO_MODEL, "dataset": DEMO_DATASET, "architecture": "small-cnn",
            "method": "partial-amnesiac", "epochs": 5, "batch_size": 32, "lr": 0.05,
            "prune_first": 0.95, "prune_last": 0.3,
        },
    )
    if model.status != "ready":
        log.error("demo model %s failed to train", DEMO_MODEL)


def banner(settings: Settings, key: str | None) -> str:
    url = f"http://{settings.host}:{settings.port}"
    shown = key or "<an existing admin key; create one with `lethe keys create --name me --scope admin`>"
    return f"""
Lethe is serving at {url}   (OpenAPI docs: {url}/docs)
admin key: {shown}

File an erasure request for data subject subject-0007 of the demo model:

  curl -s -X POST {url}/erasure-requests \\
    -H "Authorization: Bearer {shown}" -H "Content-Type: application/json" \\
    -d '{{"subject_id": "subject-0007"}}'

then follow it with the status_url it returns:

  curl -s {url}/requests/<id>/status -H "Authorization: Bearer {shown}"
"""


def serve(*, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from api.main import create_app
    from api.observability.logs import configure_logging
    from worker.embedded import EmbeddedWorker

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if host:
        settings.host = host
    if port:
        settings.port = port
    session_factory = prepare_database(settings)
    key = bootstrap_admin_key(session_factory, settings)
    if settings.seed_demo:
        seed_demo(session_factory, settings)
    # With a broker, Celery workers (`lethe worker`) do the jobs; the embedded worker, which
    # re-queues every "running" job at start, must not run beside them.
    worker = EmbeddedWorker(settings) if settings.embedded_worker and not settings.broker_url else None
    if settings.broker_url:
        log.info("LETHE_BROKER_URL is set: jobs go to Celery workers (`lethe worker`)")
    if worker is not None:
        worker.start()
    print(banner(settings, key), flush=True)
    try:
        # log_config=None: uvicorn's loggers go through our handler (JSON or text); the
        # request-id middleware writes the access lines, with the request id.
        uvicorn.run(
            create_app(settings), host=settings.host, port=settings.port,
            log_level=settings.log_level.lower(), log_config=None, access_log=False,
        )
    finally:
        if worker is not None:
            worker.stop()
