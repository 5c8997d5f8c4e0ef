"""A stored training run: open it, look up batches, reload its dataset and weights."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import replace
from functools import cached_property
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from unlearning_core.data import Dataset
from unlearning_core.errors import BlobNotFoundError, RunError
from unlearning_core.models import create_model
from unlearning_core.recording import FixedMasks, UpdateFormat
from unlearning_core.runs.attach import attached_dataset, read_attachment
from unlearning_core.runs.factory import build_model
from unlearning_core.runs.ids_only import ids_only_dataset
from unlearning_core.runs.index import StepIndex
from unlearning_core.runs.ledger import Ledger, LedgerStore
from unlearning_core.runs.marker import describe_unfinished, read_marker
from unlearning_core.runs.spec import BlobPointer, DatasetSpec, RunSpec
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import OptimConfig
from unlearning_core.weights import load_state

_POINTERS = TypeAdapter(list[BlobPointer])


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


#: Parsed fixed-mask indexes of the last few runs, by the sha256 ``run.json`` names (the
#: blob is immutable): every request on a run otherwise re-reads and unpacks the same index,
#: which for a one-subject erasure costs as much as reading its updates.
MASK_CACHE_RUNS = 4
_MASKS: OrderedDict[tuple[Any, ...], FixedMasks] = OrderedDict()
_MASKS_LOCK = threading.Lock()


class RecordedRun:
    """Read side of a run; the ledger is the only part that changes after training."""

    #: Whether a run's model factory may be an import path (``pkg.module:callable``) that
    #: rebuilding the model imports. True for the library and the CLI (the user's own runs);
    #: a service that opens runs imported from API callers sets it False on the instance,
    #: so only registered ``lethe.models`` entry points are used.
    allow_import_path: bool = True

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
            marker = read_marker(store, run_prefix(run_id))
            if marker is not None:  # recorded from a loop that has not closed, or crashed
                raise RunError(describe_unfinished(run_id, marker)) from None
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
        return _POINTERS.validate_json(self._get(self.spec.updates))  # one pass, in pydantic-core

    @cached_property
    def sample_table(self) -> dict[str, Any]:
        return json.loads(self._get(self.spec.samples))

    def update_format(self) -> UpdateFormat:
        """How the updates are laid out; for a partial run with fixed masks, with its stored
        mask index (read once per :class:`RecordedRun`, verified against its sha256)."""
        fmt = self.spec.recording.update_format(
            {k: tuple(v) for k, v in self.spec.tensors.items()}
        )
        if fmt.packed:
            fmt = replace(fmt, fixed=self.fixed_masks)
        return fmt

    @cached_property
    def fixed_masks(self) -> FixedMasks:
        """The stored fixed masks of a partial run recorded with ``mask="fixed"``."""
        rec = self.spec.recording
        if rec.mode != "partial" or rec.mask != "fixed" or rec.mask_index is None:
            raise RunError(f"run {self.run_id!r} stores no fixed-mask index (recording {rec.mode}, mask {rec.mask})")
        fmt = rec.update_format({k: tuple(v) for k, v in self.spec.tensors.items()})
        key = (rec.mask_index.sha256, rec.mask_seed, tuple(sorted(fmt.shares.items())),
               tuple(sorted(fmt.shapes.items())))
        with _MASKS_LOCK:
            found = _MASKS.get(key)
            if found is not None:
                _MASKS.move_to_end(key)
                return found
        masks = FixedMasks.from_bytes(
            self._get(rec.mask_index), seed=rec.mask_seed, shares=fmt.shares, shapes=fmt.shapes
        )
        with _MASKS_LOCK:
            _MASKS[key] = masks
            while len(_MASKS) > MASK_CACHE_RUNS:
                _MASKS.popitem(last=False)
        return masks

    def optim(self) -> OptimConfig:
        t = self.spec.training
        return OptimConfig(lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    # -- rebuilding ------------------------------------------------------------------
    def new_model(self) -> torch.nn.Module:
        loop = self.spec.loop
        if loop is not None:
            return build_model(loop.model_factory, loop.model_kwargs, allow_import_path=self.allow_import_path)
        if self.spec.num_classes is None or self.spec.in_channels is None or self.spec.image_size is None:
            raise RunError(f"run {self.run_id!r} names neither a model factory nor the sizes of {self.spec.model!r}")
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

    @cached_property
    def attached_dataset_spec(self) -> DatasetSpec | None:
        """The dataset attached beside a run that names none (an import into the service,
        :mod:`unlearning_core.runs.attach`), else None."""
        return read_attachment(self.store, self.run_id) if self.spec.dataset is None else None

    def dataset_spec(self) -> DatasetSpec | None:
        """The run's own dataset spec, else the attached one (None: ids only)."""
        return self.spec.dataset or self.attached_dataset_spec

    def dataset(self) -> Dataset:
        """The run's dataset, checked to be the one it was trained on (same ids, labels).

        A run that names no dataset (recorded from the user's own loop) gets its sample ids
        only: enough to resolve forget sets and retained positions; anything that needs the
        samples themselves raises :class:`RunError` (:mod:`unlearning_core.runs.ids_only`).
        """
        d = self.spec.dataset
        if d is None:
            attached = self.attached_dataset_spec
            if attached is None:
                return ids_only_dataset(self.run_id, self.sample_table)
            table = self.sample_table
            return attached_dataset(attached, self.run_id, list(table["sample_ids"]), table.get("labels"))
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
