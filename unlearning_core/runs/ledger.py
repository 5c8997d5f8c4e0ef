"""The per-lineage ledger: which batches were already subtracted, and the version chain.

The amnesiac guarantee "a batch is never subtracted twice" rests on this file: an
unlearning subtracts only the affected steps that are not in ``subtracted_steps`` and
writes the ledger after the new version's weights, so a crash in between leaves the old
head in force and the new weights unreferenced (a retry redoes the same subtraction).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, Field

from unlearning_core.runs.spec import BlobPointer


class VersionEntry(BaseModel):
    version: int
    weights: BlobPointer
    parent: int | None
    method: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    forget_samples: int = 0
    batches_subtracted: int = 0
    recovery_steps: int = 0


class Ledger(BaseModel):
    """Contents of ``runs/<run_id>/ledger.json``."""

    subtracted_steps: list[int] = Field(default_factory=list)
    erased_sample_ids: list[str] = Field(default_factory=list)
    versions: list[VersionEntry]
    # SISA lineages: per shard, the checkpoint after each slice of the current shard models.
    checkpoints: dict[str, list[BlobPointer]] | None = None

    @property
    def head(self) -> VersionEntry:
        return self.versions[-1]


class LedgerStore(Protocol):
    """Where a lineage's ledger lives: a JSON blob beside the run (CLI), or a database row
    (the service), so that it changes in the same transaction as the version it records."""

    def load(self) -> Ledger: ...

    def save(self, ledger: Ledger) -> None: ...
