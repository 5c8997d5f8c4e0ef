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

Known limitation: training uses every sample of the dataset as registered. Samples erased
later are not excluded (a new model on such a dataset is refused at creation, see
:func:`api.registry.service.create`, and again here before training).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import torch
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from api.audit.service import append as audit
from api.database.core import utcnow
from api.database.heartbeat import Heartbeat, stale_before
from api.datasets import service as datasets
from api.datasets.models import Dataset
from api.errors import is_transient
from api.registry import service
from api.registry.models import Model, ModelVersion, TrainingRun
from api.registry.schemas import RECORD_OF_METHOD, ModelCreate
from unlearning_core import pipeline
from unlearning_core.data import load_dataset
from unlearning_core.errors import LetheError, RunError
from unlearning_core.metrics import accuracy, collect_outputs
from unlearning_core.runs.artifact import open_artifact, run_prefix
from unlearning_core.runs.spec import RecordingSpec, RunSpec, SisaSpec, TrainingSpec
from unlearning_core.sisa import run as sisa_run
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import resolve_device

log = logging.getLogger("lethe.registry")

SessionFactory = Callable[[], Session]


def _device(device: torch.device | str | None) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _error_text(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, LetheError) else f"{type(exc).__name__}: {exc}"
    return text[:2000]


def _abandoned_clause():  # type: ignore[no-untyped-def]
    """A running run whose worker stopped beating for the stale period."""
    return (TrainingRun.status == "running") & (
        func.coalesce(TrainingRun.heartbeat_at, TrainingRun.created_at) < stale_before()
    )


def claim(*, session_factory: SessionFactory, run_pk: int | None = None) -> int | None:
    """Move one queued run (the oldest, or ``run_pk``) to ``running``; its primary key, or None.

    With ``run_pk``, a run abandoned while ``running`` (stale heartbeat) is taken as well."""
    with session_factory() as db:
        query = select(TrainingRun)
        if run_pk is not None:
            query = query.where(
                TrainingRun.id == run_pk, or_(TrainingRun.status == "queued", _abandoned_clause())
            )
        else:
            query = query.where(TrainingRun.status == "queued")
        run = db.scalar(query.order_by(TrainingRun.id).limit(1).with_for_update(skip_locked=True))
        if run is None:
            return None
        if run.status == "running":
            log.warning("training run %s was abandoned by its worker; resuming it", run.run_id)
        run.status = "running"
        run.heartbeat_at = utcnow()
        db.commit()
        return run.id


def _beat(session_factory: SessionFactory, run_pk: int) -> bool:
    with session_factory() as db:
        result = db.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_pk, TrainingRun.status == "running")
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]


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
    run = open_artifact(store, run_id)
    data = run.dataset()
    net = run.model_with(run.load_weights(run.spec.trained_weights))
    res = run.spec.results
    return {
        "train_seconds": res.train_seconds,
        "storage_bytes": res.storage_bytes,
        "steps": res.steps,
        "device": res.device,
        "test_acc": accuracy(collect_outputs(net, data.test, device=device)),
        "train_acc": accuracy(collect_outputs(net, data.train, device=device)),
    }


def _train_in_store(
    *,
    store: BlobStore,
    run_id: str,
    model: Model,
    dataset: Dataset,
    config: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    prefix = run_prefix(run_id)
    if store.exists(f"{prefix}/run.json"):
        log.warning("training run %s is already complete in %s; adopting it", run_id, store.url)
        return _evaluate_existing(store, run_id, device)
    training, recording, sisa = _configs(config)
    return pipeline.train(
        store,
        run_id=run_id,
        dataset=datasets.dataset_spec(dataset),
        model=model.architecture,
        training=training,
        recording=recording,
        sisa=sisa,
        device=device,
    )


def _check_samples(store: BlobStore, spec: RunSpec, dataset: Dataset) -> None:
    """The run's training samples must be the dataset's rows, or lineage would be wrong."""
    expected = (dataset.info or {}).get("sample_ids_sha256")
    table = store.get_json(spec.samples.key, expected_sha256=spec.samples.sha256)
    ids = table["sample_ids"]
    if len(ids) != dataset.num_samples or (
        expected and datasets.sample_ids_digest(ids) != expected
    ):
        raise RunError(
            f"dataset {dataset.name!r} ({dataset.source}) no longer holds the samples it was registered with "
            f"({len(ids)} training samples now, {dataset.num_samples} registered); register it again"
        )


def _publish(
    *,
    session_factory: SessionFactory,
    run_pk: int,
    spec: RunSpec,
    ledger: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    with session_factory() as db:
        run = db.get(TrainingRun, run_pk, with_for_update=True, populate_existing=True)
        assert run is not None
        if run.status != "running":  # published by another attempt already: never twice
            log.warning("training run %s is %s; not publishing it again", run.run_id, run.status)
            return
        model = db.get(Model, run.model_id)
        assert model is not None
        weights = spec.trained_weights
        version = ModelVersion(
            model_id=model.id,
            number=0,
            parent_number=None,
            method="train",
            weights_key=weights.key,
            weights_sha256=weights.sha256,
            weights_size=weights.size,
            metrics=metrics,
        )
        db.add(version)
        run.status = "completed"
        run.error = None
        run.ledger = ledger
        run.finished_at = utcnow()
        model.status = "ready"
        db.flush()
        audit(
            db,
            "model.trained",
            model_name=model.name,
            payload={
                "run_id": run.run_id,
                "version": 0,
                "method": model.method,
                "architecture": model.architecture,
                "weights_key": weights.key,
                "weights_sha256": weights.sha256,
                "weights_size": weights.size,
                "metrics": metrics,
            },
        )
        db.commit()


def _fail(*, session_factory: SessionFactory, run_pk: int, error: str) -> None:
    with session_factory() as db:
        run = db.get(TrainingRun, run_pk, with_for_update=True, populate_existing=True)
        if run is None or run.status == "completed":
            return
        model = db.get(Model, run.model_id)
        run.status = "failed"
        run.error = error
        run.finished_at = utcnow()
        if model is not None:
            model.status = "failed"
        audit(
            db,
            "model.training_failed",
            model_name=model.name if model else None,
            payload={"run_id": run.run_id, "error": error},
        )
        db.commit()


def _release(*, session_factory: SessionFactory, run_pk: int, error: str) -> None:
    """Put a run hit by a transient fault back in the queue (a retry is scheduled)."""
    with session_factory() as db:
        run = db.get(TrainingRun, run_pk, with_for_update=True, populate_existing=True)
        if run is None or run.status != "running":
            return
        run.status = "queued"
        run.error = error
        run.heartbeat_at = utcnow()
        db.commit()


def process_training_run(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    run_pk: int,
    retry_transient: bool = False,
) -> bool:
    """Train one claimed (``running``) run and publish version 0; False if it failed.

    With ``retry_transient``, a transient fault puts the run back in the queue and is
    re-raised (for a Celery retry) instead of failing the run."""
    with session_factory() as db:
        run = db.get(TrainingRun, run_pk)
        assert run is not None, f"training run {run_pk} vanished"
        model = db.get(Model, run.model_id)
        dataset = db.get(Dataset, model.dataset_id) if model else None
        assert model is not None and dataset is not None
        erased = service.erased_count(db=db, dataset_id=dataset.id)
        run_id, config = run.run_id, dict(run.config)
        db.expunge_all()
    log.info(
        "training %s (model %s, %s on %s)", run_id, model.name, model.architecture, dataset.name
    )
    try:
        with Heartbeat(lambda: _beat(session_factory, run_pk), name=f"training-{run_pk}"):
            _train_and_publish(
                session_factory=session_factory,
                store=store,
                device=device,
                run_pk=run_pk,
                run_id=run_id,
                model=model,
                dataset=dataset,
                config=config,
                erased=erased,
            )
    except Exception as exc:  # any failure is the run's, reported on it; the worker goes on
        if retry_transient and is_transient(exc):
            log.warning("training run %s hit a transient fault, will retry: %s", run_id, exc)
            try:
                _release(session_factory=session_factory, run_pk=run_pk, error=_error_text(exc))
            except Exception as again:  # noqa: BLE001 - the database is away too
                log.warning("could not put run %s back (%s); resumed once stale", run_id, again)
            raise
        if not isinstance(exc, LetheError):
            log.exception("training run %s failed", run_id)
        else:
            log.warning("training run %s failed: %s", run_id, exc)
        _fail(session_factory=session_factory, run_pk=run_pk, error=_error_text(exc))
        return False
    log.info("trained %s: model %s version 0 ready", run_id, model.name)
    return True


def _train_and_publish(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    run_pk: int,
    run_id: str,
    model: Model,
    dataset: Dataset,
    config: dict[str, Any],
    erased: int,
) -> None:
    """Train (or adopt what a dead worker left in the store), check, publish version 0."""
    if erased:
        raise RunError(
            f"dataset {dataset.name!r} has {erased} erased samples; training on it would reintroduce "
            "erased data (excluding them is not supported yet)"
        )
    dev = _device(device)
    result = _train_in_store(
        store=store, run_id=run_id, model=model, dataset=dataset, config=config, device=dev
    )
    _check_and_publish(
        session_factory=session_factory,
        store=store,
        run_pk=run_pk,
        run_id=run_id,
        dataset=dataset,
        result=result,
    )


def _check_and_publish(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    run_pk: int,
    run_id: str,
    dataset: Dataset,
    result: dict[str, Any],
) -> None:
    """Check a run complete in the store against its dataset, and publish version 0."""
    prefix = run_prefix(run_id)
    spec = RunSpec.model_validate(store.get_json(f"{prefix}/run.json"))
    _check_samples(store, spec, dataset)
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
        run_pk=run_pk,
        spec=spec,
        ledger=ledger,
        metrics=metrics,
    )


# --- SISA with a broker: one task per shard ----------------------------------------------


def _sisa_context(session_factory: SessionFactory, run_pk: int) -> dict[str, Any] | None:
    """What a shard task or the fan-out needs of a SISA run; None if it is not SISA."""
    with session_factory() as db:
        run = db.get(TrainingRun, run_pk)
        assert run is not None, f"training run {run_pk} vanished"
        model = db.get(Model, run.model_id)
        dataset = db.get(Dataset, model.dataset_id) if model else None
        assert model is not None and dataset is not None
        if model.method != "sisa" and (run.config or {}).get("method") != "sisa":
            return None
        erased = service.erased_count(db=db, dataset_id=dataset.id)
        out = {
            "run_id": run.run_id,
            "status": run.status,
            "config": dict(run.config),
            "model": model,
            "dataset": dataset,
            "erased": erased,
        }
        db.expunge_all()
    return out


def fan_out_sisa_training(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    run_pk: int,
    send: Callable[[int, int], Any],
    retry_transient: bool = False,
) -> str | None:
    """For a claimed (``running``) SISA run: send one shard task per untrained shard
    (``send(run_pk, shard)``, e.g. ``lethe.train_sisa_shard``) so several workers train the
    shards in parallel; None if the run is not SISA (train it with
    :func:`process_training_run`).

    The run stays ``running`` while its shards train: each shard task keeps the run's
    heartbeat fresh while it works (:func:`process_training_shard`), and the shard task
    that finds every shard's marker in the store after writing its own assembles and
    publishes the run. If no shard task beats for ``LETHE_JOB_STALE_SECONDS`` (the
    workers died, the messages were lost, or every worker was busy elsewhere), the
    dispatcher treats the run as abandoned like any other: it is re-queued and fanned out
    again, and the shards already marked done are not trained again. Returns
    ``"sharded"``, or ``"completed"``/``"failed"`` when nothing was left to fan out (every
    shard already trained: the run is finished here) or the run cannot be trained."""
    ctx = _sisa_context(session_factory, run_pk)
    if ctx is None:
        return None
    run_id, dataset = ctx["run_id"], ctx["dataset"]
    try:
        if ctx["erased"]:
            raise RunError(
                f"dataset {dataset.name!r} has {ctx['erased']} erased samples; training on it would "
                "reintroduce erased data (excluding them is not supported yet)"
            )
        _training, _recording, sisa = _configs(ctx["config"])
        assert sisa is not None
        missing = (
            []
            if store.exists(f"{run_prefix(run_id)}/run.json")
            else sisa_run.missing_shards(store, run_id, sisa.shards)
        )
    except Exception as exc:
        if retry_transient and is_transient(exc):
            _release(session_factory=session_factory, run_pk=run_pk, error=_error_text(exc))
            raise
        log.warning("training run %s failed: %s", run_id, exc)
        _fail(session_factory=session_factory, run_pk=run_pk, error=_error_text(exc))
        return "failed"
    if not missing:  # a previous attempt trained every shard: just finish here
        ok = process_training_run(
            session_factory=session_factory,
            store=store,
            device=device,
            run_pk=run_pk,
            retry_transient=retry_transient,
        )
        return "completed" if ok else "failed"
    for shard in missing:
        try:
            send(run_pk, shard)
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

    Returns ``skipped`` (the run is no longer ``running``: done, failed, or re-queued to be
    fanned out again), ``trained`` (other shards are still missing), ``published`` or
    ``failed``. Idempotent: a trained shard (marker in the store) is not trained again, and
    when two last shards finish at once both assemble the same bytes and
    :func:`_publish`'s row lock and status check let only one of them publish. A transient
    fault with retries left is re-raised for a Celery retry (the run stays ``running``;
    if the retry comes later than the stale period, the run is fanned out again)."""
    ctx = _sisa_context(session_factory, run_pk)
    if ctx is None or ctx["status"] != "running" or not _beat(session_factory, run_pk):
        return "skipped"
    run_id, model, dataset = ctx["run_id"], ctx["model"], ctx["dataset"]
    dev = _device(device)
    try:
        with Heartbeat(lambda: _beat(session_factory, run_pk), name=f"training-{run_pk}-s{shard}"):
            training, _recording, sisa = _configs(ctx["config"])
            assert sisa is not None
            spec = datasets.dataset_spec(dataset)
            data = load_dataset(
                spec.spec,
                seed=spec.split_seed,
                subject_size=spec.subject_size,
                test_fraction=spec.test_fraction,
            )
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
                run_pk=run_pk,
                run_id=run_id,
                dataset=dataset,
                result=_evaluate_existing(store, run_id, dev),
            )
    except Exception as exc:
        if retry_transient and is_transient(exc):
            log.warning(
                "training run %s shard %d hit a transient fault, will retry: %s", run_id, shard, exc
            )
            raise
        if not isinstance(exc, LetheError):
            log.exception("training run %s shard %d failed", run_id, shard)
        else:
            log.warning("training run %s shard %d failed: %s", run_id, shard, exc)
        _fail(session_factory=session_factory, run_pk=run_pk, error=_error_text(exc))
        return "failed"
    log.info("trained %s: model %s version 0 ready", run_id, model.name)
    return "published"


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
        run_pk = claim(session_factory=session_factory)
        if run_pk is None:
            break
        process_training_run(
            session_factory=session_factory, store=store, device=device, run_pk=run_pk
        )
        done += 1
    return done


def requeue_interrupted_training(*, session_factory: SessionFactory) -> int:
    """Put runs left ``running`` by a process that died back in the queue; returns how many.

    Only for start-up of a deployment whose worker is the only one (the embedded default):
    with several workers a ``running`` run may be in progress elsewhere.
    """
    with session_factory() as db:
        runs = list(
            db.scalars(select(TrainingRun).where(TrainingRun.status == "running").with_for_update())
        )
        for run in runs:
            run.status = "queued"
        db.commit()
        return len(runs)


def requeue_abandoned_training(*, session_factory: SessionFactory) -> list[int]:
    """Put ``running`` runs whose heartbeat is stale (their worker died) back in the queue;
    their primary keys. Safe while other workers train: a live run beats."""
    with session_factory() as db:
        runs = list(
            db.scalars(
                select(TrainingRun).where(_abandoned_clause()).with_for_update(skip_locked=True)
            )
        )
        for run in runs:
            log.warning("training run %s was abandoned by its worker; re-queued", run.run_id)
            run.status = "queued"
            run.heartbeat_at = utcnow()
        db.commit()
        return [run.id for run in runs]


def pending_run_ids(
    *, session_factory: SessionFactory, created_before: datetime | None = None
) -> list[int]:
    """Queued runs that no worker handed back recently (and, with ``created_before``, not
    created since then), oldest first: what a dispatcher (re)enqueues."""
    with session_factory() as db:
        query = (
            select(TrainingRun.id)
            .where(
                TrainingRun.status == "queued",
                TrainingRun.heartbeat_at.is_(None) | (TrainingRun.heartbeat_at < stale_before()),
            )
            .order_by(TrainingRun.id)
        )
        if created_before is not None:
            query = query.where(TrainingRun.created_at < created_before)
        return list(db.scalars(query))


def train_model_now(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    spec: ModelCreate | dict[str, Any],
    actor: str | None = None,
) -> Model:
    """Create a model and train it synchronously (demo seeding, scripts); returns the model row
    as it ends (``ready``, or ``failed`` with the error on its training run). Raises like
    :func:`api.registry.service.create` for bad input."""
    body = spec if isinstance(spec, ModelCreate) else ModelCreate.model_validate(spec)
    with session_factory() as db:
        _model, run = service.create(db=db, spec=body, store=store, actor=actor)
        run_pk = run.id
    if claim(session_factory=session_factory, run_pk=run_pk) is not None:
        process_training_run(
            session_factory=session_factory, store=store, device=device, run_pk=run_pk
        )
    with session_factory() as db:
        return service.get_or_raise(db=db, name=body.name)
