"""Publishing a method's candidate as the lineage's next immutable version.

Weights first, ledger last: the ledger write is what makes the version (and the batches it
subtracted, and the SISA checkpoints it replaced) count, so a crash in between leaves the
old head in force and only an unreferenced blob behind.
"""

from __future__ import annotations

from unlearning_core.methods.base import UnlearnContext, UnlearnOutcome
from unlearning_core.runs.ledger import VersionEntry
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.weights import save_state


def publish_version(ctx: UnlearnContext, outcome: UnlearnOutcome, method: str) -> VersionEntry | None:
    """The new head (or the unchanged head when nothing changed); ``None`` on a dry run."""
    ledger = ctx.ledger
    head = ledger.head
    if not ctx.publish:
        return None if outcome.changed else head
    new_ids = set(ctx.forget_ids) - set(ledger.erased_sample_ids)
    entry = head
    if outcome.changed:
        run = ctx.artifact
        number = head.version + 1
        ref = save_state(run.store, f"{run.prefix}/weights/v{number:04d}.safetensors", outcome.model.state_dict())
        entry = VersionEntry(
            version=number, weights=BlobPointer.of(ref), parent=head.version, method=method,
            forget_samples=len(ctx.forget_positions),
            batches_subtracted=len(outcome.subtracted_steps),
            recovery_steps=ctx.options.recovery_steps,
        )
        ledger.versions.append(entry)
        ledger.subtracted_steps = sorted(set(ledger.subtracted_steps) | outcome.subtracted_steps)
        if outcome.checkpoints is not None:
            ledger.checkpoints = outcome.checkpoints
    if outcome.changed or new_ids:
        ledger.erased_sample_ids = sorted(set(ledger.erased_sample_ids) | new_ids)
        ctx.artifact.save_ledger(ledger)
    return entry
