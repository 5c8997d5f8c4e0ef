"""Opening a stored training run as the artifact type its training method produced.

Above both artifact types (:class:`unlearning_core.runs.artifact.RecordedRun` and its SISA
subclass :class:`unlearning_core.sisa.artifact.SisaRun`), so neither imports the other's
module back.
"""

from __future__ import annotations

from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.ledger import LedgerStore
from unlearning_core.sisa.artifact import SisaRun
from unlearning_core.store import BlobStore
from unlearning_core.vocab import TrainingMethod


def open_artifact(
    store: BlobStore, run_id: str, ledger_store: LedgerStore | None = None
) -> RecordedRun:
    """The run ``run_id`` as the artifact type its training method produced."""
    run = RecordedRun.open(store, run_id)
    if run.spec.method == TrainingMethod.SISA:
        return SisaRun(store, run.spec, ledger_store)
    return RecordedRun(store, run.spec, ledger_store)
