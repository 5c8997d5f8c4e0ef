"""The lineage ledger of a model, kept in its training run's row (``training_runs.ledger``).

The ledger (which steps were subtracted, the versions, SISA checkpoints) changes in the same
transaction as the version row it belongs to, so a retry after a crash redoes the same
subtraction rather than subtract a step twice. :class:`DbLedger` is the
:class:`unlearning_core.runs.ledger.LedgerStore` the library writes through.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.registry.models import TrainingRun
from unlearning_core.errors import RunError
from unlearning_core.runs.artifact import run_prefix
from unlearning_core.runs.ledger import Ledger
from unlearning_core.store import BlobStore


class DbLedger:
    """The ledger in ``training_runs.ledger`` (:class:`LedgerStore` protocol).

    ``save`` only assigns the column: the caller's transaction commits it together with
    the version row it belongs to. A row without a ledger (a run adopted from the blob
    store) starts from the run's ``ledger.json``.
    """

    def __init__(
        self, session: Session, run: TrainingRun, *, store: BlobStore | None = None
    ) -> None:
        self.session = session
        self.run = run
        self.store = store

    def load(self) -> Ledger:
        if self.run.ledger is None:
            if self.store is None:
                raise RunError(f"training run {self.run.run_id!r} has no ledger in the database")
            return Ledger.model_validate(
                self.store.get_json(f"{run_prefix(self.run.run_id)}/ledger.json")
            )
        return Ledger.model_validate(self.run.ledger)

    def save(self, ledger: Ledger) -> None:
        self.run.ledger = ledger.model_dump(mode="json")  # a fresh dict: the ORM sees the change
