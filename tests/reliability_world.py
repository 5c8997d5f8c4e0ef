"""A small populated service for the reliability tests (fuzzing, authorization matrix, soak).

Fuzzing and the matrix only reach a handler's real code when the path names something that
exists (a 404 from a dependency proves little), so every test starts from the same world:
the digits dataset with subjects of ten, one ready model with its version 0 trained for real,
a queued erasure request, and one key per scope in tenant ``acme`` plus a ``globex`` key.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy.orm import Session

from api.auth.service import create_key
from api.erasure import service as erasure
from api.erasure.schemas import ErasureRequestCreate
from api.webhooks import service as webhooks
from api.webhooks.schemas import WebhookCreate
from tests.service_fixtures import insert_digits_dataset, insert_trained_model
from unlearning_core.data import load_dataset
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

MODEL = "digits-a"
RUN_ID = "world-run"
DATASET = "digits-subjects"  # the name insert_digits_dataset registers
SUBJECT = "subject-0003"
#: Tenant globex's own dataset and model (subjects of twenty: it has no subject-0100).
OTHER_MODEL = "digits-g"
OTHER_RUN_ID = "world-run-globex"
OTHER_DATASET = "digits-globex"
ONLY_ACME_SUBJECT = "subject-0100"


def train_world_run(root: Path, run_id: str = RUN_ID, subject_size: int = 10) -> Path:
    """One partial-amnesiac MLP on digits (one epoch): the run every world copies."""
    train_run(
        LocalBlobStore(root),
        run_id=run_id,
        dataset=load_dataset("digits", subject_size=subject_size),
        dataset_spec=DatasetSpec(spec="digits", subject_size=subject_size),
        model_name="mlp",
        training=TrainingSpec(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0),
        recording=RecordingSpec(mode="partial", prune_first=0.95, prune_last=0.3),
        device=torch.device("cpu"),
    )
    return root


def train_world_runs(root: Path) -> Path:
    """The run of acme's model and the run of globex's (subjects of twenty)."""
    train_world_run(root)
    return train_world_run(root, OTHER_RUN_ID, subject_size=20)


@dataclass(frozen=True)
class World:
    """Tenant acme: the dataset, the ready model, a queued request, webhook 1, a key per
    scope. Tenant globex: a dataset and ready model of its own, a queued request, and a
    key per scope (``other_tenant`` is its requester)."""

    keys: dict[str, str]
    request_id: str
    other_request_id: str
    model: str = MODEL
    dataset: str = DATASET
    version: int = 0
    webhook_id: int = 1


def build_world(db: Session, runs: Path) -> World:
    """Populate the (emptied) service database and blob folder named by the environment
    from ``runs`` (made by :func:`train_world_runs`)."""
    from api.auth.dependencies import Principal
    from api.blobs import get_store

    shutil.copytree(runs, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    store = get_store()
    dataset = insert_digits_dataset(db)
    insert_trained_model(
        db, store=store, dataset_id=dataset.id, name=MODEL, run_id=RUN_ID, architecture="mlp",
        method="partial-amnesiac",
    )
    other = insert_digits_dataset(db, tenant="globex", name=OTHER_DATASET, subject_size=20)
    insert_trained_model(
        db, store=store, dataset_id=other.id, name=OTHER_MODEL, run_id=OTHER_RUN_ID,
        architecture="mlp", method="partial-amnesiac", tenant="globex",
    )
    keys: dict[str, str] = {}
    principals: dict[str, Principal] = {}
    for caller, scope, tenant in (
        ("requester", "requester", "acme"), ("registry", "registry", "acme"), ("admin", "admin", "acme"),
        ("other_tenant", "requester", "globex"), ("other_registry", "registry", "globex"),
        ("other_admin", "admin", "globex"),
    ):
        row, keys[caller] = create_key(db, name=f"world-{caller}", scopes=[scope], tenant=tenant)
        principals[caller] = Principal(key_id=row.id, name=row.name, tenant=tenant, scopes=frozenset(row.scopes))
    webhooks.register(db=db, principal=principals["admin"], body=WebhookCreate(url="http://127.0.0.1:9/world"))
    db.commit()
    request, _ = erasure.create(
        db=db, principal=principals["requester"], body=ErasureRequestCreate(subject_id=SUBJECT),
        idempotency_key=None,
    )
    other, _ = erasure.create(
        db=db, principal=principals["other_tenant"],
        body=ErasureRequestCreate(subject_id="subject-0004", models=[OTHER_MODEL]), idempotency_key=None,
    )
    return World(keys=keys, request_id=request.id, other_request_id=other.id)
