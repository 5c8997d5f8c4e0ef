"""One interface for every unlearning method, and the registry that finds them by name.

A method is a small module with a class registered by name. It knows

- which trained artifacts it can work from (``trained_with``: the training method recorded
  in ``run.json``), so handing it another method's artifact is a clear error;
- how to prepare training (``recording``: what must be recorded or checkpointed), used by
  ``lethe train --method``;
- how to unlearn a forget set (``unlearn``), returning the candidate model, its timings and
  what the lineage's ledger must remember.

Publishing (weights blob, version entry, ledger) is common and lives in
:mod:`unlearning_core.methods.publish`; the worker and the CLI never branch on names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from unlearning_core.data import Dataset
from unlearning_core.errors import MethodError
from unlearning_core.methods.prune_search import PruneSearch
from unlearning_core.runs.ledger import Ledger
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.training.loop import sgd_steps

Guarantee = Literal["exact", "approximate"]
SINGLE_MODEL_TRAINING = ("plain", "amnesiac", "partial-amnesiac")


@dataclass(frozen=True)
class UnlearnOptions:
    """Knobs of all methods in one place; each method reads the ones it understands.

    ``None`` means "the method's default", which is usually the run's own setting.
    """

    prune_first: float | None = None
    prune_last: float | None = None
    prune_search: PruneSearch | None = None  # partial-amnesiac --prune auto
    recovery_steps: int = 0
    steps: int | None = None  # label-flip / neg-grad iterations
    lr: float | None = None
    batch_size: int | None = None
    target_forget_acc: float | None = None  # neg-grad early stop
    mix_retain: float = 0.0  # label-flip: share of each batch drawn from retained data
    aggregation: str | None = None  # sisa: vote | softmax
    bn_repair: str = "auto"  # amnesiac: re-estimate BatchNorm statistics (methods/batchnorm.py)
    seed: int = 0


@dataclass
class UnlearnContext:
    artifact: Any  # RecordedRun or SisaRun, as the method's trained_with says
    dataset: Dataset
    ledger: Ledger
    forget_positions: np.ndarray
    forget_ids: list[str]
    options: UnlearnOptions
    device: torch.device
    publish: bool = True
    progress: bool = False
    #: Shown the candidate right before the recovery fine-tune (the pipeline records the
    #: accuracy timeline point "after unlearning, before recovery" with it).
    before_recovery: Callable[[torch.nn.Module], None] | None = None

    def retain_positions(self) -> np.ndarray:
        """Training positions still in use: not in this forget set nor erased before."""
        erased = set(self.ledger.erased_sample_ids) | set(self.forget_ids)
        ids = self.dataset.train.sample_ids
        return np.asarray([i for i, s in enumerate(ids) if s not in erased], dtype=np.int64)


@dataclass
class UnlearnOutcome:
    model: torch.nn.Module  # the candidate (CPU)
    unlearn_seconds: float
    recovery_seconds: float = 0.0
    changed: bool = True  # False: nothing to do (e.g. every batch already subtracted)
    subtracted_steps: set[int] = field(default_factory=set)
    checkpoints: dict[str, list[BlobPointer]] | None = None  # sisa: new shard checkpoints
    details: dict[str, Any] = field(default_factory=dict)  # method-specific figures


class UnlearningMethod(ABC):
    name: ClassVar[str]
    guarantee: ClassVar[Guarantee]
    trained_with: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]

    def check_artifact(self, trained_method: str, run_id: str) -> None:
        if trained_method not in self.trained_with:
            raise MethodError(
                f"method {self.name!r} cannot unlearn run {run_id!r}, which was trained with "
                f"--method {trained_method}; it needs a run trained with "
                f"--method {' or '.join(self.trained_with)}"
            )

    @abstractmethod
    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome: ...


_METHODS: dict[str, UnlearningMethod] = {}


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator: adding a method is one module plus this line."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is already registered")
    _METHODS[cls.name] = cls()
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get_method(name: str) -> UnlearningMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodError(f"unknown unlearning method {name!r}; known: {', '.join(_METHODS)}") from None


def recover(model: torch.nn.Module, ctx: UnlearnContext, *, optim: Any, batch_size: int, seed: int) -> float:
    """The optional recovery fine-tune on retained data; returns its seconds (0 if none)."""
    if ctx.options.recovery_steps <= 0:
        return 0.0
    if ctx.before_recovery is not None:
        ctx.before_recovery(model)
    retain = ctx.dataset.train.subset(ctx.retain_positions())
    return sgd_steps(
        model, retain, steps=ctx.options.recovery_steps, batch_size=batch_size, optim=optim,
        device=ctx.device, seed=seed,
    )
