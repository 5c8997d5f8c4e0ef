"""The dataset of a run that names none: its sample ids, and no data.

A run recorded from the user's own loop knows the ids of the samples each step held (that
is all amnesiac unlearning needs: which steps to subtract), but not the samples themselves.
The unlearning pipeline still gets a :class:`Dataset` for it, so forget sets resolve and
retained positions are known; its images are a zero-size tensor that refuses to be used,
so any step that needs the data (evaluation, a recovery fine-tune, BatchNorm
re-estimation, retraining, fine-tuning methods) stops with a :class:`RunError` saying so,
instead of an obscure shape error deep in a model.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearning_core.data import Dataset, SampleSet
from unlearning_core.errors import RunError

#: Labels of samples whose class the run does not know.
UNKNOWN_LABEL = -1

#: Tensor methods that only read metadata or select rows (what SampleSet itself does).
_ALLOWED = frozenset({"__get__", "__getitem__", "size", "dim", "__len__", "numel", "__repr__", "__format__"})

NO_DATA = (
    "this run names no dataset (it was recorded from its own training loop by record_training): "
    "its samples are known by id only, so evaluation, a recovery fine-tune, BatchNorm "
    "re-estimation, retraining and fine-tuning methods cannot run on it. Amnesiac and "
    "partial-amnesiac unlearning can: use them without evaluation (lethe unlearn --no-evaluate), "
    "with --recovery-steps 0 and, for a model with BatchNorm, --bn-repair never"
)


class NoSampleData(torch.Tensor):
    """A zero-size ``N x 0 x 1 x 1`` images tensor: its shape can be read and its rows
    selected; anything else raises :class:`RunError` (:data:`NO_DATA`)."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") not in _ALLOWED:
            raise RunError(NO_DATA)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        return out.as_subclass(cls) if isinstance(out, torch.Tensor) else out


def no_images(n: int) -> torch.Tensor:
    return torch.empty((n, 0, 1, 1)).as_subclass(NoSampleData)


def ids_only_dataset(run_id: str, table: dict[str, Any]) -> Dataset:
    """The run's training samples by id (labels as recorded, -1 when unknown), no test set."""
    ids = tuple(str(s) for s in table["sample_ids"])
    n = len(ids)
    labels = table.get("labels") or [UNKNOWN_LABEL] * n
    subjects = table.get("subject_ids") or [None] * n
    train = SampleSet(
        images=no_images(n),
        labels=torch.as_tensor(labels, dtype=torch.int64).reshape(n),
        sample_ids=ids,
        subject_ids=tuple(subjects),
    )
    test = SampleSet(
        images=no_images(0), labels=torch.empty(0, dtype=torch.int64), sample_ids=(), subject_ids=()
    )
    return Dataset(name=f"{run_id} (ids only)", train=train, test=test, num_classes=0, class_names=())
