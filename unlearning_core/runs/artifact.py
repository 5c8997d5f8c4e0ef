"""A stored training run: open it, look up batches, reload its dataset and weights."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import torch
from pydantic import ValidationError

from unlearning_core.data import Dataset
from unlearning_core.errors import BlobNotFoundError, RunError
from unlearning_core.models import create_model
from unlearning_core.recording import UpdateFormat
from unlearning_core.runs.index import StepIndex
from unlearning_core.runs.ledger import Ledger, LedgerStore
from unlearning_core.runs.spec import BlobPointer, RunSpec
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import OptimConfig
from unlearning_core.weights import load_state


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


class RecordedRun:
    """Read side of a run; the ledger is the only part that changes after training."""

    def __init__(self, store: BlobStore, spec: RunSpec, ledger_store: LedgerStore | None = None) -> None:
        self.store = store
        self.spec = spec
        self.ledger_store = ledger_store

    @classmethod
    def open(cls, store: BlobStore, run_id: str) -> RecordedRun:
        key = f"{run_prefix(run_id)}/run.json"
        try:
            raw = store.get_json(key)
        except BlobNotFoundError:
            raise RunError(f"no run {run_id!r} in store {store.url}") from None
        try:
            return cls(store, RunSpec.model_validate(raw))
        except ValidationError as exc:
            raise RunError(f"run {run_id!r} has an unreadable run.json: {exc.errors()[0]['msg']}") from None

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def prefix(self) -> str:
        return run_prefix(self.spec.run_id)

    # -- lineage ---------------------------------------------------------------------
    def ledger(self) -> Ledger:
        if self.ledger_store is not None:
            return self.ledger_store.load()
        return Ledger.model_validate(self.store.get_json(f"{self.prefix}/ledger.json"))

    def save_ledger(self, ledger: Ledger) -> None:
        if self.ledger_store is not None:
            self.ledger_store.save(ledger)
            return
        self.store.put_json(f"{self.prefix}/ledger.json", ledger.model_dump(mode="json"))

    # -- what was recorded -----------------------------------------------------------
    @cached_property
    def index(self) -> StepIndex:
        return StepIndex.from_bytes(self._get(self.spec.index))

    @cached_property
    def update_blobs(self) -> list[BlobPointer]:
        """Per step, the update blob and its sha256 (empty when nothing was recorded)."""
        return [BlobPointer.model_validate(b) for b in json.loads(self._get(self.spec.updates))]

    @cached_property
    def sample_table(self) -> dict[str, Any]:
        return json.loads(self._get(self.spec.samples))

    def update_format(self) -> UpdateFormat:
        return self.spec.recording.update_format(
            {k: tuple(v) for k, v in self.spec.tensors.items()}
        )

    def optim(self) -> OptimConfig:
        t = self.spec.training
        return OptimConfig(lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    # -- rebuilding ------------------------------------------------------------------
    def new_model(self) -> torch.nn.Module:
        return create_model(
            self.spec.model,
            in_channels=self.spec.in_channels,
            image_size=tuple(self.spec.image_size),
            num_classes=self.spec.num_classes,
        )

    def model_with(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        model = self.new_model()
        model.load_state_dict(state)
        return model

    def load_weights(self, pointer: BlobPointer) -> dict[str, torch.Tensor]:
        return load_state(self.store, pointer.ref())

    def dataset(self) -> Dataset:
        """The run's dataset, checked to be the one it was trained on (same ids, labels)."""
        d = self.spec.dataset
        dataset = d.load()
        table = self.sample_table
        if list(dataset.train.sample_ids) != table["sample_ids"] or (
            dataset.train.labels.tolist() != table["labels"]
        ):
            raise RunError(
                f"dataset {d.spec!r} no longer matches run {self.run_id!r} (sample ids or labels changed)"
            )
        return dataset

    def _get(self, pointer: BlobPointer) -> bytes:
        return self.store.get(pointer.key, expected_sha256=pointer.sha256)
