"""Training queued models: claim a run, train it with unlearning_core, publish version 0.

Called by the embedded worker thread (``process_pending_training``) and by the demo seeding
(``train_model_now``). Each step is its own short transaction, never one held open across
minutes of training:

1. claim: ``queued -> running`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
   workers never train the same run; SQLite has a single writer anyway);
2. train outside any transaction: ``unlearning_core.pipeline.train`` writes the run to the
   blob store (``runs/<run_id>/``), ``run.json`` last;
3. publish, in one transaction: run ``completed`` with the lineage ledger copied into the
   database, ``ModelVersion`` 0, model ``ready``, audit event ``model.trained``.

While it trains, a heartbeat thread refreshes the run's ``heartbeat_at``; a ``running`` run
whose heartbeat is stale (its worker died) may be claimed again. Publishing is idempotent:
a run already ``completed`` is left as it is. A Celery worker passes
``retry_transient=True`` while it has retries left: a transient fault (database or blob
store unreachable) then puts the run back in ``queued`` and re-raises for a retry.

A failure marks run and model ``failed`` with a readable error and an audit event
``model.training_failed``. A run whose ``run.json`` already exists in the store (a worker
died between 2 and 3) is adopted instead of trained again: runs are immutable.

With a broker, a SISA run is trained one Celery task per shard instead
(:func:`fan_out_sisa_training`, :func:`process_training_shard`): the run stays ``running``
while any shard task keeps its heartbeat fresh, and the task that finds every shard
trained publishes it. The embedded worker trains every shard in-process.

Erased samples never get in for good: a single-model run leaves out every sample
tombstoned when its attempt starts, and at publish time every sample of the run that was
tombstoned meanwhile (a request completed while the model trained; with SISA, any erased
sample) gets an erasure job of its request on the new model at once
(:func:`api.erasure.service.add_late_jobs`). The model stays ``training`` (its weights are
not served) until those jobs are done, and the version 0 they supersede is withdrawn
without grace: it was never served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch
from sqlalchemy.orm import Session

from api.audit.service import append as audit
from api.auth.tenants import DEFAULT_TENANT
from api.blobs import store_at
from api.compaction import flows as compaction
from api.database.core import utcnow
from api.datasets import service as datasets
from api.datasets.models import Dataset
from api.erasure import service as erasure
from api.jobs.lease import LeaseToken
from api.jobs.policy import FAILED, execute
from api.jobs.states import JobState
from api.registry import service
from api.registry.lease import LEASE
from api.registry.models import Model, RunKind, TrainingRun
from api.registry.schemas import RECORD_OF_METHOD, ModelCreate
from api.webhooks import service as webhooks
from unlearning_core import pipeline
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import RunError
from unlearning_core.methods import version_guarantee
from unlearning_core.runs.artifact import run_prefix
from unlearning_core.runs.spec import RecordingSpec, RunSpec, SisaSpec, TrainingSpec
from unlearning_core.sisa import run as sisa_run
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import resolve_device
from unlearning_core.vocab import TRAIN_METHOD, TrainingMethod

log = logging.getLogger("lethe.registry")

SessionFactory = Callable[[], Session]


def _device(device: torch.device | str | None) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)




def claim(*, session_factory: SessionFactory, run_pk: int | None = None) -> LeaseToken | None:
    """Take one queued run (the oldest, or ``run_pk``; with ``run_pk`` a run abandoned while
    ``running`` is taken as well): ``running``, its lease token; None if there is none."""
    claimed = LEASE.claim(session_factory=session_factory, job_id=run_pk)
    return claimed if isinstance(claimed, LeaseToken) else None


def _on_fail(db: Session, _parent: None, run: TrainingRun) -> None:
    """A failed run fails its model too, audited ``model.training_failed``."""
    model = db.get(Model, run.model_id)
    if model is not None:
        model.status = "failed"
    audit(
        db,
        "model.training_failed",
        model_name=model.name if model else None,
        tenant=model.tenant if model else None,
        payload={"run_id": run.run_id, "error": run.error},
    )


def _configs(config: dict[str, Any]) -> tuple[TrainingSpec, RecordingSpec, SisaSpec | None]:
    spec = ModelCreate.model_validate(config)
    klass, share = spec.concentration()
    training = TrainingSpec(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        seed=spec.seed,
        concentrate_class=klass,
        concentrate_share=share,
    )
    recording = RecordingSpec(
        mode=RECORD_OF_METHOD[spec.method],
        mask=spec.mask,
        mask_seed=spec.seed,
        prune_first=spec.prune_first,
        prune_last=spec.prune_last,
        dtype=spec.dtype,
        skip_layers=spec.skip_layers,
        group_steps=spec.group_steps,
        compression=spec.compression,
        budget={"max_bytes": spec.max_storage_bytes} if spec.max_storage_bytes else None,
    )
    sisa = (
        SisaSpec(
            shards=spec.shards,
            slices=spec.slices,
            aggregation=spec.aggregation,
            by_subject=spec.sisa_by_subject,
        )
        if spec.method == "sisa"
        else None
    )
    return training, recording, sisa


def _evaluate_existing(store: BlobStore, run_id: str, device: torch.device) -> dict[str, Any]:
    """Metrics of a run found already complete in the store (adopted after a crash)."""
    return pipeline.run_metrics(open_artifact(store, run_id), device)


def _train_in_store(
    *,
    store: BlobStore,
    run_id: str,
    model: Model,
    dataset: Dataset,
    config: dict[str, Any],
    device: torch.device,
    erased: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    prefix = run_prefix(run_id)
    if store.exists(f"{prefix}/run.json"):
        log.warning("training run %s is already complete in %s; adopting it", run_id, store.url)
        return _evaluate_existing(store, run_id, device)
    training, recording, sisa = _configs(config)
    spec = datasets.dataset_spec(dataset)
    if sisa is None and erased:  # SISA shards must agree on one set: late jobs handle it
        spec = spec.model_copy(update={"exclude_sample_ids": sorted(erased)})
    return pipeline.train(
        store,
        run_id=run_id,
        dataset=spec,
        model=model.architecture,
        training=training,
        recording=recording,
        sisa=sisa,
        device=device,
    )


def _check_samples(store: BlobStore, spec: RunSpec, dataset: Dataset) -> list[str]:
    """The run's training samples must be the dataset's rows, or lineage would be wrong;
    returns them."""
    expected = (dataset.info or {}).get("sample_ids_sha256")
    table = store.get_json(spec.samples.key, expected_sha256=spec.samples.sha256)
    ids = table["sample_ids"]
    left_out = len(spec.dataset.exclude_sample_ids)
    if len(ids) + left_out != dataset.num_samples or (
        expected and not left_out and datasets.sample_ids_digest(ids) != expected
    ):
        raise RunError(
            f"dataset {dataset.name!r} ({dataset.source}) no longer holds the samples it was registered with "
            f"({len(ids)} training samples now, {dataset.num_samples} registered); register it again"
        )
    return ids


def _publish(
    *,
    session_factory: SessionFactory,
    token: LeaseToken,
    spec: RunSpec,
    ledger: dict[str, Any],
    metrics: dict[str, Any],
    trained: list[str],
) -> None:
    """Version 0, the run ``completed`` with its ledger, the model ``ready``: one transaction,
    only while this attempt still holds the run (never twice). If samples of ``trained``
    were erased meanwhile, their requests get an erasure job on the model at once and the
    model stays ``training`` until they are done."""
    with session_factory() as db:
        held = LEASE.lock_held(db, token)
        if held is None:
            log.warning("training run %s is no longer ours to publish; leaving it", token.job_id)
            return
        _parent, run = held
        model = db.get(Model, run.model_id)
        assert model is not None
        service.publish_version(
            db=db,
            model=model,
            number=0,
            parent=None,
            method=TRAIN_METHOD,
            weights=spec.trained_weights,
            metrics=metrics,
            event="model.trained",
            payload={
                "run_id": run.run_id,
                "method": model.method,
                "architecture": model.architecture,
            },
        )
        run.status = JobState.COMPLETED
        run.error = None
        run.ledger = ledger
        run.finished_at = utcnow()
        late = erasure.add_late_jobs(
            db=db, model=model, erased=datasets.erased_among(db=db, dataset_id=model.dataset_id, sample_ids=trained)
        )
        model.status = "training" if late else "ready"
        if not late:  # a model still applying late erasures serves nothing yet
            webhooks.emit(db, tenant=model.tenant, kind="version.published", payload={
                "model": model.name, "version": 0, "method": TRAIN_METHOD,
                "guarantee": version_guarantee(TRAIN_METHOD)})
        db.commit()


@dataclass(frozen=True)
class RunContext:
    """A training run as its worker needs it, read in one short transaction (detached rows)."""

    run_id: str
    status: str
    token: LeaseToken  # the attempt holding the run now
    config: dict[str, Any]
    model: Model
    dataset: Dataset
    erased: frozenset[str]  # tombstoned samples of its dataset when the attempt started
    kind: str = RunKind.TRAIN  # a compaction is trained by api.compaction.flows
    store_url: str = ""  # where the run lives (its tenant's prefix): api.blobs.store_at


def _run_context(session_factory: SessionFactory, run_pk: int) -> RunContext:
    with session_factory() as db:
        run = db.get(TrainingRun, run_pk)
        assert run is not None, f"training run {run_pk} vanished"
        model = db.get(Model, run.model_id)
        dataset = db.get(Dataset, model.dataset_id) if model else None
        assert model is not None and dataset is not None
        ctx = RunContext(
            run_id=run.run_id,
            status=run.status,
            token=LeaseToken(job_id=run.id, attempt=run.attempts),
            config=dict(run.config or {}),
            model=model,
            dataset=dataset,
            erased=frozenset(datasets.erased_ids(db=db, dataset_id=dataset.id)),
            kind=run.kind,
            store_url=run.store_url,
        )
        db.expunge_all()
    return ctx


def process_training_run(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    token: LeaseToken,
    retry_transient: bool = False,
) -> bool:
    """Train one claimed run and publish version 0 under the lease policy
    (:func:`api.jobs.policy.execute`); False if it failed. With ``retry_transient``, a
    transient fault puts the run back in the queue and is re-raised (for a Celery retry).
    A compaction run is trained and published by :mod:`api.compaction.flows`."""
    ctx = _run_context(session_factory, token.job_id)
    store = store_at(ctx.store_url, store)
    if ctx.kind == RunKind.COMPACTION:
        return compaction.process_compaction(
            session_factory=session_factory,
            store=store,
            device=device,
            token=token,
            retry_transient=retry_transient,
        )
    run_id, config, model, dataset, erased = (
        ctx.run_id, ctx.config, ctx.model, ctx.dataset, ctx.erased
    )
    log.info(
        "training %s (model %s, %s on %s)", run_id, model.name, model.architecture, dataset.name
    )
    done = execute(
        LEASE,
        session_factory=session_factory,
        token=token,
        work=lambda: _train_and_publish(
            session_factory=session_factory,
            store=store,
            device=device,
            token=token,
            run_id=run_id,
            model=model,
            dataset=dataset,
            config=config,
            erased=erased,
        ),
        what=f"training run {run_id}",
        retry_transient=retry_transient,
        on_fail=_on_fail,
    )
    if done is FAILED:
        return False
    log.info("trained %s: model %s version 0 ready", run_id, model.name)
    return True


def _train_and_publish(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    token: LeaseToken,
    run_id: str,
    model: Model,
    dataset: Dataset,
    config: dict[str, Any],
    erased: frozenset[str],
) -> None:
    """Train (or adopt what a dead worker left in the store), check, publish version 0."""
    dev = _device(device)
    result = _train_in_store(
        store=store, run_id=run_id, model=model, dataset=dataset, config=config, device=dev,
        erased=erased,
    )
    _check_and_publish(
        session_factory=session_factory,
        store=store,
        token=token,
        run_id=run_id,
        dataset=dataset,
        result=result,
    )


def _check_and_publish(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    token: LeaseToken,
    run_id: str,
    dataset: Dataset,
    result: dict[str, Any],
) -> None:
    """Check a run complete in the store against its dataset, and publish version 0."""
    prefix = run_prefix(run_id)
    spec = RunSpec.model_validate(store.get_json(f"{prefix}/run.json"))
    trained = _check_samples(store, spec, dataset)
    ledger = store.get_json(f"{prefix}/ledger.json")
    metrics = {
        "test_acc": result.get("test_acc"),
        "train_acc": result.get("train_acc"),
        "train_seconds": result["train_seconds"],
        "storage_bytes": result["storage_bytes"],
        "steps": result.get("steps"),
        "device": result.get("device"),
    }
    _publish(
        session_factory=session_factory,
        token=token,
        spec=spec,
        ledger=ledger,
        metrics=metrics,
        trained=trained,
    )


# --- SISA with a broker: one task per shard ----------------------------------------------


def _sisa_context(session_factory: SessionFactory, run_pk: int) -> RunContext | None:
    """What a shard task or the fan-out needs of a SISA run; None if it is not SISA."""
    ctx = _run_context(session_factory, run_pk)
    is_sisa = TrainingMethod.SISA in (ctx.model.method, ctx.config.get("method"))
    return ctx if is_sisa else None


def fan_out_sisa_training(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    token: LeaseToken,
    send: Callable[[int, int], Any],
    retry_transient: bool = False,
) -> str | None:
    """For a claimed SISA run: send one shard task per untrained shard (``send(run_pk,
    shard)``, e.g. ``lethe.train_sisa_shard``) so several workers train the shards in
    parallel; None if the run is not SISA (train it with :func:`process_training_run`).

    The run stays ``running`` while its shards train: each shard task keeps the run's
    heartbeat fresh while it works (:func:`process_training_shard`), and the shard task
    that finds every shard's marker in the store after writing its own assembles and
    publishes the run. If no shard task beats for ``LETHE_JOB_STALE_SECONDS`` (the
    workers died, the messages were lost, or every worker was busy elsewhere), the
    dispatcher treats the run as abandoned like any other: it is re-queued and fanned out
    again, and the shards already marked done are not trained again. Returns
    ``"sharded"``, or ``"completed"``/``"failed"`` when nothing was left to fan out (every
    shard already trained: the run is finished here) or the run cannot be trained."""
    ctx = _sisa_context(session_factory, token.job_id)
    if ctx is None:
        return None
    run_id = ctx.run_id
    store = store_at(ctx.store_url, store)

    def untrained_shards() -> list[int]:
        _training, _recording, sisa = _configs(ctx.config)
        assert sisa is not None
        if store.exists(f"{run_prefix(run_id)}/run.json"):
            return []
        return sisa_run.missing_shards(store, run_id, sisa.shards)

    missing = execute(
        LEASE,
        session_factory=session_factory,
        token=token,
        work=untrained_shards,
        what=f"training run {run_id}",
        retry_transient=retry_transient,
        on_fail=_on_fail,
        heartbeat=False,
    )
    if missing is FAILED:
        return "failed"
    if not missing:  # a previous attempt trained every shard: just finish here
        ok = process_training_run(
            session_factory=session_factory,
            store=store,
            device=device,
            token=token,
            retry_transient=retry_transient,
        )
        return "completed" if ok else "failed"
    for shard in missing:
        try:
            send(token.job_id, shard)
        except Exception as exc:  # noqa: BLE001 - broker away: the run goes stale, is re-queued
            log.warning(
                "could not send shard tasks of training run %s (%s); it is fanned out again once stale",
                run_id,
                exc,
            )
            break
    log.info("training run %s: %d shard task(s) sent", run_id, len(missing))
    return "sharded"


def process_training_shard(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    run_pk: int,
    shard: int,
    worker: str | None = None,
    retry_transient: bool = False,
) -> str:
    """Train one shard of a fanned-out SISA run (see :func:`fan_out_sisa_training`), then,
    if every shard is trained, assemble the run in the store and publish version 0.

    The task works for the attempt that holds the run when it starts (its lease token).
    Returns ``skipped`` (the run is no longer ``running`` in that attempt: done, failed, or
    re-queued to be fanned out again), ``trained`` (other shards are still missing),
    ``published`` or ``failed``. Idempotent: a trained shard (marker in the store) is not
    trained again, and when two last shards finish at once both assemble the same bytes
    and :func:`_publish`'s lease check lets only one of them publish. A transient fault
    with retries left is re-raised for a Celery retry and the run stays ``running`` (if
    the retry comes later than the stale period, the run is fanned out again)."""
    ctx = _sisa_context(session_factory, run_pk)
    if ctx is None or ctx.status != JobState.RUNNING:
        return "skipped"
    token: LeaseToken = ctx.token
    if not LEASE.beat(session_factory=session_factory, token=token):
        return "skipped"
    run_id, model, dataset = ctx.run_id, ctx.model, ctx.dataset
    store = store_at(ctx.store_url, store)
    dev = _device(device)

    def train_shard() -> str:
        training, _recording, sisa = _configs(ctx.config)
        assert sisa is not None
        spec = datasets.dataset_spec(dataset)
        data = spec.load()
        common: dict[str, Any] = {
            "dataset": data,
            "model_name": model.architecture,
            "training": training,
            "sisa": sisa,
        }
        sisa_run.train_sisa_shard(
            store, run_id=run_id, shard=shard, device=dev, worker=worker, **common
        )
        log.info("training run %s: shard %d trained", run_id, shard)
        if sisa_run.missing_shards(store, run_id, sisa.shards):
            return "trained"
        if not store.exists(f"{run_prefix(run_id)}/run.json"):
            sisa_run.finish_sisa_run(
                store, run_id=run_id, dataset_spec=spec, device_name=str(dev), **common
            )
        _check_and_publish(
            session_factory=session_factory,
            store=store,
            token=token,
            run_id=run_id,
            dataset=dataset,
            result=_evaluate_existing(store, run_id, dev),
        )
        log.info("trained %s: model %s version 0 ready", run_id, model.name)
        return "published"

    outcome = execute(
        LEASE,
        session_factory=session_factory,
        token=token,
        work=train_shard,
        what=f"training run {run_id} shard {shard}",
        retry_transient=retry_transient,
        release_on_transient=False,
        on_fail=_on_fail,
    )
    return "failed" if outcome is FAILED else outcome


def process_pending_training(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    limit: int | None = None,
) -> int:
    """Train queued runs one after another (at most ``limit``); returns how many were processed
    (succeeded or failed). Safe to call from several workers at once."""
    done = 0
    while limit is None or done < limit:
        token = claim(session_factory=session_factory)
        if token is None:
            break
        process_training_run(
            session_factory=session_factory, store=store, device=device, token=token
        )
        done += 1
    return done


def requeue_interrupted_training(*, session_factory: SessionFactory) -> int:
    """Put runs left ``running`` by a process that died back in the queue; returns how many.

    Only for start-up of a deployment whose worker is the only one (the embedded default):
    with several workers a ``running`` run may be in progress elsewhere.
    """
    return LEASE.requeue_interrupted(session_factory=session_factory)


def requeue_abandoned_training(*, session_factory: SessionFactory) -> list[int]:
    """Put ``running`` runs whose heartbeat is stale (their worker died) back in the queue;
    their primary keys. Safe while other workers train: a live run beats."""
    return LEASE.requeue_abandoned(session_factory=session_factory)


def pending_run_ids(
    *, session_factory: SessionFactory, created_before: datetime | None = None
) -> list[int]:
    """Queued runs that no worker handed back recently (and, with ``created_before``, not
    created since then), oldest first: what a dispatcher (re)enqueues."""
    return LEASE.pending_ids(session_factory=session_factory, changed_before=created_before)


def train_model_now(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    spec: ModelCreate | dict[str, Any],
    actor: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> Model:
    """Create ``tenant``'s model and train it synchronously (demo seeding, scripts); returns the model row
    as it ends (``ready``, or ``failed`` with the error on its training run). Raises like
    :func:`api.registry.service.create` for bad input."""
    body = spec if isinstance(spec, ModelCreate) else ModelCreate.model_validate(spec)
    with session_factory() as db:
        _model, run = service.create(db=db, spec=body, store=store, actor=actor, tenant=tenant)
        run_pk = run.id
    token = claim(session_factory=session_factory, run_pk=run_pk)
    if token is not None:
        process_training_run(
            session_factory=session_factory, store=store, device=device, token=token
        )
    with session_factory() as db:
        return service.get_or_raise(db=db, name=body.name, tenant=tenant)
