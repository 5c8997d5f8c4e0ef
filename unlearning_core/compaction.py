"""Compaction: retrain a lineage from scratch without everything erased from it.

An approximate erasure (amnesiac, partial amnesiac, a fine-tune method) answers a request
in seconds, but its version stays *approximate* for good, and a stream of them wears the
model down (subtracted steps pile up, accuracy drifts). A compaction is the exact tier: the
model is trained again from scratch, with its own training specification (architecture,
optimiser, epochs, seed, recording mode), on the retained data (every erased sample left
out). The result starts a new lineage (fresh ledger, fresh step index) whose first version
continues the model's numbering; every request erased before it is exact with it, and
later requests are served fast again from its recording.

Here lives what the service and the CLI share: the per-model :class:`CompactionPolicy`,
when it fires (:func:`triggers`, :func:`due_trigger`), and :func:`compact` itself. What a
lineage looks like to the policy (:class:`LineageState`) is computed by the caller (the
service from its database, ``lethe compact`` and the stream benchmark from the ledger).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import RunError
from unlearning_core.runs.ledger import LedgerStore
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, LineageOrigin
from unlearning_core.store import BlobStore


class Trigger(StrEnum):
    """What asked for a compaction (recorded with it)."""

    DEADLINE = "deadline"  # the oldest approximate request would stay so past compact_within_days
    REQUESTS = "requests"  # compact_after_requests requests are approximate only
    SUBTRACTED_SHARE = "subtracted_share"  # that share of the recorded steps is subtracted
    ACCURACY_DROP = "accuracy_drop"  # test accuracy fell that far below the lineage's first version
    MANUAL = "manual"  # an admin (POST /models/{name}/compact) or ``lethe compact``


class CompactionPolicy(BaseModel):
    """When a model is compacted; whichever trigger comes first fires. ``None`` turns a
    trigger off (all off: compaction only on demand)."""

    model_config = ConfigDict(extra="forbid")

    compact_within_days: float | None = Field(
        default=21, gt=0, le=366,
        description="the longest a request may stay approximate, in days (the deadline "
        "trigger fires early enough for a compaction of the last training's duration)",
    )
    compact_after_requests: int | None = Field(
        default=100, ge=1, le=1_000_000,
        description="compact once this many requests are approximate only",
    )
    max_subtracted_share: float | None = Field(
        default=None, gt=0, le=1,
        description="compact once this share of the lineage's recorded steps was subtracted "
        "(off by default: a single subject touches a few percent of the steps under uniform "
        "shuffling, so a share such as 0.5 fires every couple of dozen requests whatever the "
        "accuracy; the accuracy-drop trigger measures the harm itself; see the erasure-stream bench)",
    )
    max_accuracy_drop: float | None = Field(
        default=0.02, ge=0, le=1,
        description="compact once the latest version's test accuracy is this far below the "
        "lineage's first version",
    )


@dataclass(frozen=True)
class LineageState:
    """What the policy looks at, for one lineage (a training run and its versions)."""

    waiting_requests: int  # requests answered approximately only, not yet exact
    oldest_waiting_at: datetime | None  # when the oldest of them was received
    subtracted_share: float  # subtracted steps / recorded steps of the lineage
    accuracy_drop: float | None  # first version's test accuracy - latest's (None: unknown)
    estimated_seconds: float | None = None  # how long a compaction takes (the last training's time)


#: How far ahead of a deadline the deadline trigger fires, beyond twice the estimate: room
#: for one failed compaction and its retry before the request would be late.
DEADLINE_MARGIN = timedelta(hours=1)


def deadline_of(policy: CompactionPolicy, state: LineageState) -> datetime | None:
    """When the oldest waiting request must be exact by the policy (None: nothing waits,
    or the deadline trigger is off)."""
    if policy.compact_within_days is None or state.oldest_waiting_at is None:
        return None
    return state.oldest_waiting_at + timedelta(days=policy.compact_within_days)


def deadline_fires_at(policy: CompactionPolicy, state: LineageState) -> datetime | None:
    """When the deadline trigger fires: the deadline less twice the estimated compaction
    time and :data:`DEADLINE_MARGIN` (a failed compaction can still be retried in time)."""
    deadline = deadline_of(policy, state)
    if deadline is None:
        return None
    lead = timedelta(seconds=2 * (state.estimated_seconds or 0.0)) + DEADLINE_MARGIN
    return deadline - lead


def triggers(policy: CompactionPolicy, state: LineageState, now: datetime) -> list[dict[str, Any]]:
    """Every trigger of the policy with its threshold, the lineage's value and whether it
    fires now (the deadline trigger also says when it fires), in the order they are tried."""
    rows: list[dict[str, Any]] = []
    if policy.compact_within_days is not None:
        fires_at = deadline_fires_at(policy, state)
        rows.append({
            "trigger": Trigger.DEADLINE.value,
            "threshold": policy.compact_within_days,
            "value": (
                (now - state.oldest_waiting_at).total_seconds() / 86400
                if state.oldest_waiting_at is not None else None
            ),
            "fires": fires_at is not None and now >= fires_at,
            "fires_at": fires_at,
        })
    if policy.compact_after_requests is not None:
        rows.append({
            "trigger": Trigger.REQUESTS.value,
            "threshold": policy.compact_after_requests,
            "value": state.waiting_requests,
            "fires": state.waiting_requests >= policy.compact_after_requests,
        })
    if policy.max_subtracted_share is not None:
        rows.append({
            "trigger": Trigger.SUBTRACTED_SHARE.value,
            "threshold": policy.max_subtracted_share,
            "value": state.subtracted_share,
            "fires": state.waiting_requests > 0 and state.subtracted_share >= policy.max_subtracted_share,
        })
    if policy.max_accuracy_drop is not None:
        drop = state.accuracy_drop
        rows.append({
            "trigger": Trigger.ACCURACY_DROP.value,
            "threshold": policy.max_accuracy_drop,
            "value": drop,
            "fires": state.waiting_requests > 0 and drop is not None and drop > policy.max_accuracy_drop,
        })
    return rows


def due_trigger(policy: CompactionPolicy, state: LineageState, now: datetime) -> Trigger | None:
    """The first trigger that fires now, or None. A lineage with nothing erased since its
    start is never compacted by a trigger (there would be nothing to make exact)."""
    if state.waiting_requests <= 0:
        return None
    for row in triggers(policy, state, now):
        if row["fires"]:
            return Trigger(row["trigger"])
    return None


def compaction_run_id(run_id: str, version: int) -> str:
    """The default id of the run compacting ``run_id`` at its version ``version``."""
    base = re.sub(r"-c\d+$", "", run_id)
    return f"{base[:110]}-c{version + 1}"


def _retrainable(old: RecordedRun) -> tuple[DatasetSpec, str]:
    """What Lethe's own loop retrains ``old`` with: its dataset (its own, or the one the
    service attached at import) and its model. A run recorded from the user's loop is
    retrained with Lethe's SGD loop from the recorded settings (epochs, batch size, lr,
    momentum, weight decay) and its factory; one whose loop used another optimizer cannot be
    reproduced that way, which is an error naming it."""
    spec = old.spec
    data_spec = old.dataset_spec()
    if data_spec is None:
        raise RunError(
            f"run {old.run_id!r} names no dataset (recorded from its own loop): import it against a "
            "registered dataset (POST /models/import) so it can be retrained"
        )
    if spec.loop is None:
        return data_spec, spec.model
    others = [o for o in spec.loop.optimizers if o.rsplit(".", 1)[-1] != "SGD"]
    if others:
        raise RunError(
            f"run {old.run_id!r} was trained by its own loop with {', '.join(others)}; Lethe retrains with "
            "SGD and cannot reproduce that training, so it cannot compact this lineage (retrain it "
            "yourself without the erased samples and import the new run)"
        )
    return data_spec, spec.loop.model_factory


def compact(
    store: BlobStore,
    *,
    run_id: str,
    new_run_id: str | None = None,
    exclude: list[str] | None = None,
    trigger: str = Trigger.MANUAL,
    first_version: int | None = None,
    device: torch.device,
    ledger_store: LedgerStore | None = None,
    progress: bool = False,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train ``run_id``'s model again from scratch without ``exclude`` (default: every
    sample its ledger erased) as a new run, the new lineage, and return what it did.

    The new run keeps the old one's training specification and recording mode, leaves out
    the old run's exclusions as well, and records in ``run.json``'s ``origin`` which run and
    version it replaces. Its first version is ``first_version`` (default: the old head's
    number + 1), so the model's version numbers go on. A SISA run is exact already (every
    SISA erasure retrains the shards that held the data), so there is nothing to compact:
    that is an error naming the reason.
    """
    from unlearning_core import pipeline

    old = open_artifact(store, run_id, ledger_store)
    spec = old.spec
    if spec.sisa is not None:
        raise RunError(
            f"run {run_id!r} is a SISA run: every SISA erasure already retrains the shards that "
            "held the data, so its versions are exact and there is nothing to compact"
        )
    data_spec, model_name = _retrainable(old)
    ledger = old.ledger()
    head = ledger.head.version
    erased = list(ledger.erased_sample_ids) if exclude is None else list(exclude)
    in_run = set(old.sample_table["sample_ids"])
    newly = sorted(s for s in set(erased) if s in in_run)
    excluded = sorted(set(data_spec.exclude_sample_ids) | set(newly))
    if len(excluded) - len(data_spec.exclude_sample_ids) >= len(in_run):
        raise RunError(f"nothing would be left to train on: every sample of run {run_id!r} is erased")
    target = new_run_id or compaction_run_id(run_id, head)
    origin = LineageOrigin(
        run_id=run_id,
        version=head,
        first_version=head + 1 if first_version is None else first_version,
        excluded_samples=len(newly),
        trigger=str(trigger),
    )
    result = pipeline.train(
        store,
        run_id=target,
        dataset=data_spec.model_copy(update={"exclude_sample_ids": excluded}),
        model=model_name,
        training=spec.training,
        recording=spec.recording,
        device=device,
        progress=progress,
        evaluate=evaluate,
        origin=origin,
    )
    return {
        **result,
        "compacted_run_id": run_id,
        "compacted_version": head,
        "version": origin.first_version,
        "trigger": origin.trigger,
        "excluded_samples": len(newly),
        "excluded_total": len(excluded),
        "retained_samples": len(in_run) - len(newly),
        "subtracted_steps_before": len(ledger.subtracted_steps),
        "versions_before": len(ledger.versions),
    }
