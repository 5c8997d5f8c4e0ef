"""The train / unlearn workflows behind ``lethe train`` and ``lethe unlearn``.

Kept out of the CLI so the worker runs exactly the same code for a request, and so the
results are plain dicts with DESIGN.md's metric names, ready for JSON. Nothing here
branches on a method's name: methods are found in the registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import unlearning_core.methods  # noqa: F401  (registers the built-in methods)
from unlearning_core.errors import MethodError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.base import UnlearnContext, UnlearnOutcome, get_method, validate_options
from unlearning_core.methods.options import MethodOptions, OptionError
from unlearning_core.methods.publish import publish_version
from unlearning_core.metrics import MetricNames, accuracy, collect_outputs, evaluate_unlearning
from unlearning_core.metrics.distance import states_differ
from unlearning_core.artifacts import open_artifact
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.ledger import LedgerStore, VersionEntry
from unlearning_core.runs.spec import DatasetSpec, LineageOrigin, RecordingSpec, SisaSpec, TrainingSpec
from unlearning_core.report.records import ErasureRecord, save_record
from unlearning_core.report.timeline import TimelinePoint, TimelineProbe
from unlearning_core.runs.train import train_run
from unlearning_core.sisa.run import train_sisa_run
from unlearning_core.store import BlobRef, BlobStore


def train(
    store: BlobStore,
    *,
    run_id: str,
    dataset: DatasetSpec,
    model: str,
    training: TrainingSpec,
    recording: RecordingSpec,
    sisa: SisaSpec | None = None,
    device: torch.device,
    progress: bool = False,
    evaluate: bool = True,
    origin: LineageOrigin | None = None,
) -> dict[str, Any]:
    """Train a single model (recording as ``recording`` says) or, with ``sisa``, a SISA run.
    ``dataset.exclude_sample_ids`` are left out; ``origin`` makes it a compaction run (a
    new lineage continuing another's version numbers)."""
    data = dataset.load()
    common = dict(
        run_id=run_id, dataset=data, dataset_spec=dataset, model_name=model, training=training,
        device=device, progress=progress,
    )
    run = (
        train_sisa_run(store, sisa=sisa, **common)
        if sisa is not None
        else train_run(store, recording=recording, origin=origin, **common)
    )
    res = run.spec.results
    out: dict[str, Any] = {
        "run_id": run_id,
        "store": store.url,
        "method": run.spec.method,
        "model": model,
        "dataset": dataset.spec,
        "record": run.spec.recording.mode,
        "steps": res.steps,
        "samples_processed": res.samples_processed,
        "train_seconds": res.train_seconds,
        "record_stall_seconds": res.stall_seconds,
        "storage_bytes": res.storage_bytes,
        "weights": f"{store.url}/{run.spec.trained_weights.key}",
        "device": res.device,
    }
    if evaluate:
        net = run.model_with(run.load_weights(run.spec.trained_weights))
        out["test_acc"] = accuracy(collect_outputs(net, data.test, device=device))
        out["train_acc"] = accuracy(collect_outputs(net, data.train, device=device))
    return out


def run_metrics(run: RecordedRun, device: torch.device) -> dict[str, Any]:
    """A stored run's training figures and its trained model's accuracies (a run adopted
    from the store after a crash is published with these)."""
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
        "retained_samples": len(data.train),
    }


@dataclass
class MethodRun:
    """What one method did to one run: the candidate, its version, and the context."""

    method: str
    outcome: UnlearnOutcome
    version: VersionEntry | None
    context: UnlearnContext
    #: Accuracy right after the erasure (and after recovery, if any), for the timeline.
    timeline: list[TimelinePoint] = field(default_factory=list)


def apply_method(
    store: BlobStore,
    *,
    run_id: str,
    method: str,
    forget: ForgetSpec,
    method_options: Mapping[str, Any] | MethodOptions | None = None,
    device: torch.device,
    publish: bool = True,
    progress: bool = False,
    ledger_store: LedgerStore | None = None,
) -> MethodRun:
    """Resolve the forget set, run the method on the lineage head, publish (unless dry).

    ``method_options`` are the method's options as a plain mapping (a job's stored JSON,
    ``--option``s) or an options object; they are validated against the method's options
    model before anything is read (:func:`validate_options`), and the result, defaults
    filled in, is what the method sees and what :func:`report` records.
    ``ledger_store`` keeps the lineage ledger elsewhere than beside the run (the service
    keeps it in its database, to change it in the transaction that records the version).
    """
    impl = get_method(method)
    options = validate_options(impl, method_options)
    artifact = open_artifact(store, run_id, ledger_store)
    impl.check_artifact(artifact.spec.method, run_id)
    table = artifact.sample_table
    dataset = artifact.dataset()
    if artifact.spec.dataset is None and artifact.dataset_spec() is not None:
        # a run from the user's own loop knows its ids only: classes and subjects come from
        # the dataset attached to it (in the run's sample order)
        labels, subjects = dataset.train.labels.tolist(), list(dataset.train.subject_ids)
    else:
        labels, subjects = table["labels"], table["subject_ids"]
    positions = forget.resolve(table["sample_ids"], labels, subjects)
    ctx = UnlearnContext(
        artifact=artifact,
        dataset=dataset,
        ledger=artifact.ledger(),
        forget_positions=positions,
        forget_ids=[table["sample_ids"][i] for i in positions],
        options=options,
        device=device,
        publish=publish,
        progress=progress,
    )
    probe = TimelineProbe(
        ctx.dataset.test, ctx.dataset.num_classes, device=device, seed=artifact.spec.training.seed
    ) if publish and len(ctx.dataset.test) else None
    before_recovery: list[TimelinePoint] = []

    if probe is not None:

        def keep_start(model: torch.nn.Module) -> None:
            before_recovery[:] = [probe(model, 0, "unlearn")]

        ctx.before_recovery = keep_start
    outcome = impl.unlearn(ctx)
    version = publish_version(ctx, outcome, impl.name)
    timeline: list[TimelinePoint] = []
    if probe is not None and outcome.changed:
        recovered = ctx.options.recovery_steps > 0 and bool(before_recovery)
        final = probe(outcome.model, ctx.options.recovery_steps if recovered else 0,
                      "recovery" if recovered else "unlearn")
        timeline = [*before_recovery, final] if recovered else [final]
    return MethodRun(method=impl.name, outcome=outcome, version=version, context=ctx, timeline=timeline)


def save_erasure_record(done: MethodRun, metrics: dict[str, Any] | None, forget: str) -> BlobRef | None:
    """Keep what a later report of the new version needs beside the run (None if nothing
    was published)."""
    ctx, version = done.context, done.version
    if version is None or not (ctx.publish and done.outcome.changed):
        return None
    labels = ctx.dataset.train.labels[ctx.forget_positions].tolist() if len(ctx.forget_positions) else []
    record = ErasureRecord(
        version=version.version, parent=version.parent, method=done.method,
        guarantee=get_method(done.method).guarantee, forget=forget, forget_ids=list(ctx.forget_ids),
        forget_classes=sorted({int(k) for k in labels}), recovery_steps=ctx.options.recovery_steps,
        method_options=ctx.options.model_dump(mode="json"), timeline=done.timeline,
        metrics=json.loads(json.dumps(metrics, default=str)) if metrics is not None else None,
    )
    return save_record(ctx.artifact.store, ctx.artifact.prefix, record)


def report(
    done: MethodRun,
    *,
    evaluate: bool = True,
    retrained_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """What a method did, with DESIGN.md's metric names (and the metrics, if ``evaluate``)."""
    ctx, outcome, version = done.context, done.outcome, done.version
    run = ctx.artifact
    impl = get_method(done.method)
    out: dict[str, Any] = {
        "run_id": run.run_id,
        "method": impl.name,
        "guarantee": impl.guarantee,
        "method_options": ctx.options.model_dump(mode="json"),
        "forget_samples": int(len(ctx.forget_positions)),
        "version": version.version if version else None,
        "new_version": bool(ctx.publish and outcome.changed),
        "unlearn_seconds": outcome.unlearn_seconds,
        "recovery_seconds": outcome.recovery_seconds,
        "storage_bytes": run.spec.results.storage_bytes,
        **outcome.details,
        "weights": f"{run.store.url}/{version.weights.key}" if version else None,
        "weights_sha256": version.weights.sha256 if version else None,
    }
    if evaluate:
        device = ctx.device
        original_state = run.load_weights(run.spec.trained_weights)
        original = run.model_with(original_state)
        forget_set = ctx.dataset.train.subset(ctx.forget_positions)
        original_forget_acc = accuracy(collect_outputs(original, forget_set, device=device))
        out["original_forget_acc"] = original_forget_acc
        # vs the trained weights: a method that left them as they were timed nothing
        out["weights_changed"] = states_differ(outcome.model.state_dict(), original_state)
        out.update(
            evaluate_unlearning(
                outcome.model, ctx.dataset, ctx.forget_positions, device=device,
                original_state=original_state, retrained_state=retrained_state,
                original_forget_acc=original_forget_acc, relearn=run.optim(),
                relearn_batch_size=run.spec.training.batch_size, seed=run.spec.training.seed,
            )
        )
    return out


def unlearn(
    store: BlobStore,
    *,
    run_id: str,
    method: str,
    forget: ForgetSpec,
    method_options: Mapping[str, Any] | MethodOptions | None = None,
    device: torch.device,
    progress: bool = False,
    evaluate: bool = True,
    publish: bool = True,
    retrained_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Apply ``method`` to the run's lineage head and report it."""
    done = apply_method(
        store, run_id=run_id, method=method, forget=forget, method_options=method_options,
        device=device, publish=publish, progress=progress,
    )
    out = {"forget": forget.describe(), **report(done, evaluate=evaluate, retrained_state=retrained_state)}
    save_erasure_record(done, out if evaluate else None, forget.describe())
    return out


def options_per_method(
    methods: list[str], method_options: Mapping[str, Any] | None
) -> dict[str, MethodOptions]:
    """One set of options for several methods side by side: each method gets the options
    its model knows, validated; an option that none of them knows is an error (a typo must
    not vanish just because several methods run)."""
    raw = dict(method_options or {})
    impls = [get_method(m) for m in methods]
    known = {name for impl in impls for name in impl.options_model.model_fields}
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise OptionError(
            f"no compared method ({', '.join(methods)}) has option {unknown[0]!r}",
            method=",".join(methods), options=unknown,
        )
    return {
        impl.name: validate_options(
            impl, {k: v for k, v in raw.items() if k in impl.options_model.model_fields}
        )
        for impl in impls
    }


#: The metrics of each compared row's ``retrain_gap`` (registered with ``show=("gap", ...)``).
GAP_METRICS = MetricNames("gap")


def compare(
    store: BlobStore,
    *,
    run_id: str,
    methods: list[str],
    forget: ForgetSpec,
    sisa_run_id: str | None = None,
    method_options: Mapping[str, Any] | None = None,
    device: torch.device,
    progress: bool = False,
) -> dict[str, Any]:
    """Several methods on one forget set from the same trained starting points, side by side.

    Nothing is published. ``retrain`` (when listed) runs first: its model is the reference
    for every single-model row's ``layer_distance`` and for the ``retrain_gap`` of all rows,
    and its time is the denominator of ``speedup_vs_retrain``.
    """
    impls = [get_method(m) for m in methods]  # unknown names fail before any work
    options = options_per_method([m.name for m in impls], method_options)  # bad options too
    order = sorted(impls, key=lambda m: m.name != "retrain")
    rows: list[dict[str, Any]] = []
    retrained: dict[str, torch.Tensor] | None = None
    originals: dict[str, float | None] = {}
    for impl in order:
        exact_sisa = "sisa" in impl.trained_with
        target = sisa_run_id if exact_sisa else run_id
        if target is None:
            raise MethodError(f"method {impl.name!r} needs a SISA run: pass --sisa-run-id")
        done = apply_method(
            store, run_id=target, method=impl.name, forget=forget,
            method_options=options[impl.name], device=device, publish=False, progress=progress,
        )
        row = report(done, retrained_state=None if exact_sisa else retrained)
        if impl.name == "retrain":
            retrained = {k: v.detach().cpu() for k, v in done.outcome.model.state_dict().items()}
        if target not in originals:
            run = done.context.artifact
            net = run.model_with(run.load_weights(run.spec.trained_weights))
            originals[target] = accuracy(collect_outputs(net, done.context.dataset.test, device=device))
        row["original_test_acc"] = originals[target]
        rows.append(row)
    base = next((r for r in rows if r["method"] == "retrain"), None)
    for row in rows:
        if base is None:
            break
        spent = row["unlearn_seconds"] + row["recovery_seconds"]
        # a method that left the weights as they were timed nothing: no speed-up to report
        changed = row.get("weights_changed", True) or row["method"] in ("retrain", "sisa")
        row["speedup_vs_retrain"] = base["unlearn_seconds"] / spent if spent > 0 and changed else None
        row["retrain_gap"] = {
            k: (row[k] - base[k]) if row.get(k) is not None and base.get(k) is not None else None
            for k in GAP_METRICS
        }
    return {
        "forget": forget.describe(),
        "run_id": run_id,
        "sisa_run_id": sisa_run_id,
        "single_model_test_acc": originals.get(run_id),
        "sisa_test_acc": originals.get(sisa_run_id) if sisa_run_id else None,
        "methods": [r["method"] for r in rows],
        "rows": rows,
    }
