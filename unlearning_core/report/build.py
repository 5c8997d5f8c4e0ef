"""Assembling one version's erasure report from a stored run and plain data.

The service and the CLI call :func:`erasure_report` alike. What only the service knows
(request ids, the audit-chain position, the metrics it stored) comes in as plain values,
so this library never touches a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from unlearning_core.errors import RunError
from unlearning_core.methods.base import get_method
from unlearning_core.metrics import MetricNames, evaluate_unlearning, get_metric
from unlearning_core.report import figures
from unlearning_core.report.gradcam import GradCamError, build_panel
from unlearning_core.report.html import b64, render_html, render_pdf
from unlearning_core.report.records import ErasureRecord, load_record, load_training_timeline, record_key
from unlearning_core.report.timeline import assemble
from unlearning_core.runs.ledger import Ledger, VersionEntry

#: Rows of the metrics table: the registry's metrics shown on the report, in its order.
METRIC_ROWS = MetricNames("report")


@dataclass(frozen=True)
class RequestRef:
    id: str
    subject_id: str | None
    samples: int


@dataclass(frozen=True)
class AuditPosition:
    id: int
    seq: int
    kind: str
    hash: str
    prev_hash: str


@dataclass(frozen=True)
class Comparison:
    """Another run's version of the same erasure (another method), shown beside this one."""

    run: Any  # RecordedRun
    ledger: Ledger
    version: int


@dataclass
class Report:
    html: str
    figures: dict[str, bytes]
    summary: dict[str, Any] = field(default_factory=dict)

    def pdf(self) -> bytes:
        return render_pdf(self.html)


def _entry(ledger: Ledger, number: int, run_id: str) -> VersionEntry:
    for v in ledger.versions:
        if v.version == number:
            return v
    raise RunError(f"run {run_id!r} has no version {number}; latest is {ledger.head.version}")


def _record(run: Any, number: int) -> ErasureRecord:
    if number == 0:
        raise RunError(f"version 0 of run {run.run_id!r} is the trained model; reports are for versions made by an erasure")
    record = load_record(run.store, run.prefix, number)
    if record is None:
        raise RunError(
            f"version {number} of run {run.run_id!r} has no erasure record "
            f"({record_key(run.prefix, number)}); it was published before reports existed"
        )
    return record


def erasure_report(
    run: Any,
    ledger: Ledger,
    version: int,
    *,
    device: torch.device,
    model_name: str | None = None,
    requests: list[RequestRef] | None = None,
    audit: AuditPosition | None = None,
    metrics: dict[str, Any] | None = None,
    compare: Comparison | None = None,
    layer: str | None = None,
) -> Report:
    """The report of ``version`` of ``run`` (its lineage ``ledger``)."""
    entry = _entry(ledger, version, run.run_id)
    record = _record(run, version)
    dataset = run.dataset()
    forget_pos = dataset.train.positions_of(record.forget_ids)
    original_state = run.load_weights(run.spec.trained_weights)
    parent_entry = _entry(ledger, entry.parent if entry.parent is not None else 0, run.run_id)
    new_model = run.model_with(run.load_weights(entry.weights))
    metrics = metrics or record.metrics
    if metrics is None:
        metrics = evaluate_unlearning(new_model, dataset, forget_pos, device=device,
                                      original_state=original_state, seed=run.spec.training.seed)
    previous = evaluate_unlearning(
        run.model_with(run.load_weights(parent_entry.weights)), dataset, forget_pos, device=device,
        original_state=original_state, seed=run.spec.training.seed,
    )
    label_new = f"v{version} {record.method}"
    columns = [f"previous (v{parent_entry.version})", label_new]
    metric_sets = [previous, metrics]
    distances = {label_new: metrics.get("layer_distance") or {}}
    cam_models = [("original (v0)", run.model_with(original_state)), (label_new, new_model)]
    blobs = [
        ("weights: original (v0)", run.spec.trained_weights),
        (f"weights: v{version}", entry.weights),
        ("run.json inputs: sample index", run.spec.index),
        ("run.json inputs: samples", run.spec.samples),
    ]
    if parent_entry.version != 0:
        blobs.insert(1, (f"weights: parent (v{parent_entry.version})", parent_entry.weights))
    if run.spec.timeline is not None:
        blobs.append(("training timeline", run.spec.timeline))
    erasure_blob = run.store.stat(record_key(run.prefix, version))
    if compare is not None:
        other_entry = _entry(compare.ledger, compare.version, compare.run.run_id)
        other_record = _record(compare.run, compare.version)
        other_model = compare.run.model_with(compare.run.load_weights(other_entry.weights))
        other_metrics = other_record.metrics or evaluate_unlearning(
            other_model, dataset, forget_pos, device=device, original_state=original_state,
            seed=run.spec.training.seed,
        )
        label_other = f"{compare.run.run_id} v{compare.version} {other_record.method}"
        columns.append(label_other)
        metric_sets.append(other_metrics)
        distances[label_other] = other_metrics.get("layer_distance") or {}
        cam_models.append((label_other, other_model))
        blobs.append((f"weights: {label_other}", other_entry.weights))

    notes: dict[str, str] = {}
    figs: dict[str, bytes] = {}
    if any(distances.values()):
        figs["layer_distance"] = figures.layer_distance_chart(distances)
    try:
        panel = build_panel(cam_models, dataset.test, record.forget_classes, device=device, layer=layer)
        figs["gradcam"] = figures.gradcam_grid(panel)
    except GradCamError as exc:
        notes["gradcam"] = f"Grad-CAM not shown: {exc}"
    training = load_training_timeline(run)
    chain = []
    for v in ledger.versions:
        if 0 < v.version <= version:
            rec = record if v.version == version else load_record(run.store, run.prefix, v.version)
            chain.append((v.version, v.method, v.recovery_steps, rec.timeline if rec else []))
    if training is not None or any(points for *_, points in chain):
        figs["timeline"] = figures.timeline_chart(assemble(training, chain), record.forget_classes)
    else:
        notes["timeline"] = "no accuracy timeline was recorded for this run (trained before timelines existed, or with timeline_every=0)"

    impl = get_method(record.method)
    context = {
        "model_name": model_name or run.run_id,
        "run_id": run.run_id,
        "version": version,
        "parent": entry.parent,
        "created_at": entry.created_at.isoformat(timespec="seconds"),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": [r.__dict__ for r in (requests or [])],
        "forget": record.forget,
        "forget_samples": len(record.forget_ids),
        "forget_classes": record.forget_classes,
        "method": record.method,
        "guarantee": record.guarantee,
        "method_summary": impl.summary,
        "recovery_steps": record.recovery_steps,
        "method_options": record.method_options,
        "metric_columns": columns,
        "metric_rows": _metric_rows(metric_sets),
        "figures": {k: b64(v) for k, v in figs.items()},
        "notes": notes,
        "blobs": [
            {"label": label, "key": p.key, "sha256": p.sha256, "size": p.size} for label, p in blobs
        ] + [{"label": "erasure record", "key": erasure_blob.key, "sha256": erasure_blob.sha256,
              "size": erasure_blob.size}],
        "audit": audit.__dict__ if audit else None,
    }
    summary = {k: v for k, v in context.items() if k not in ("figures", "metric_rows")}
    summary["metrics"] = {
        col: {row: _jsonable(m.get(row)) for row in METRIC_ROWS} for col, m in zip(columns, metric_sets)
    }
    summary["figures"] = sorted(figs)
    return Report(html=render_html(context), figures=figs, summary=summary)


def _metric_rows(metric_sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per report metric that any column has, labelled and formatted as registered."""
    rows = []
    for name in METRIC_ROWS:
        if all(m.get(name) is None for m in metric_sets):
            continue
        spec = get_metric(name)
        rows.append({
            "name": name, "label": spec.label, "better": spec.better,
            "values": [spec.format(m.get(name)) for m in metric_sets],
        })
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value
