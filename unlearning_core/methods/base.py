"""One interface for every unlearning method, and the registry that finds them by name.

A method is a small module with a class registered by name. It knows

- which trained artifacts it can work from (``trained_with``: the training method recorded
  in ``run.json``), so handing it another method's artifact is a clear error;
- its options (``options_model``: a pydantic model extending
  :class:`~unlearning_core.methods.options.MethodOptions`, with defaults, bounds and
  descriptions), validated by :func:`validate_options` wherever options come from (Python,
  ``lethe unlearn --option``, an erasure request's ``method_options``);
- how to unlearn a forget set (``unlearn``), returning the candidate model, its timings and
  what the lineage's ledger must remember.

Publishing (weights blob, version entry, ledger) is common and lives in
:mod:`unlearning_core.methods.publish`; the worker and the CLI never branch on names.
Optimisation-based methods (a loss and a few SGD steps) extend
:class:`unlearning_core.methods.finetune.FinetuneMethod` instead of writing their own loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from pydantic import ValidationError

from unlearning_core.data import Dataset
from unlearning_core.errors import LetheError, MethodError
from unlearning_core.methods.options import MethodOptions, OptionError, describe_options, explain
from unlearning_core.runs.ledger import Ledger
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.training.loop import sgd_steps
from unlearning_core.vocab import (
    COMPACT_METHOD,
    SINGLE_MODEL_TRAINING,
    TRAIN_METHOD,
    Guarantee,
    TrainingMethod,
)

__all__ = [
    "SINGLE_MODEL_TRAINING",
    "Guarantee",
    "MethodOptions",
    "UnlearnContext",
    "UnlearnOutcome",
    "UnlearningMethod",
    "get_method",
    "method_catalog",
    "method_names",
    "recover",
    "register_method",
    "unregister_method",
    "validate_options",
]

OptionsT = TypeVar("OptionsT", bound=MethodOptions)


@dataclass
class UnlearnContext:
    artifact: Any  # RecordedRun or SisaRun, as the method's trained_with says
    dataset: Dataset
    ledger: Ledger
    forget_positions: np.ndarray
    forget_ids: list[str]
    #: Validated against the method's ``options_model`` (:func:`validate_options`).
    options: MethodOptions
    device: torch.device
    publish: bool = True
    progress: bool = False
    #: Shown the candidate right before the recovery fine-tune (the pipeline records the
    #: accuracy timeline point "after unlearning, before recovery" with it).
    before_recovery: Callable[[torch.nn.Module], None] | None = None

    def options_as(self, model: type[OptionsT]) -> OptionsT:
        """The options as the method's own model (what :func:`validate_options` made)."""
        if not isinstance(self.options, model):
            raise MethodError(
                f"options of type {type(self.options).__name__} given where {model.__name__} "
                "is needed; validate them with validate_options(method, options)"
            )
        return self.options

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
    trained_with: ClassVar[tuple[TrainingMethod, ...]]
    summary: ClassVar[str]
    #: The method's options; a method with no knobs of its own keeps the shared ones.
    options_model: ClassVar[type[MethodOptions]] = MethodOptions

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
    model = getattr(cls, "options_model", None)
    if not (isinstance(model, type) and issubclass(model, MethodOptions)):
        raise TypeError(f"method {cls.name!r}: options_model must extend MethodOptions")
    if model.model_config.get("extra") != "forbid":
        raise TypeError(f"method {cls.name!r}: options_model must forbid unknown options")
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is already registered")
    _METHODS[cls.name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Forget a registered method (a test's or a plugin's; built-ins stay registered)."""
    if _METHODS.pop(name, None) is None:
        raise MethodError(f"unknown unlearning method {name!r}; known: {', '.join(_METHODS)}")


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get_method(name: str) -> UnlearningMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodError(f"unknown unlearning method {name!r}; known: {', '.join(_METHODS)}") from None


def version_guarantee(method: str) -> Guarantee:
    """The guarantee of a version made by ``method``: exact for a training (``train``,
    version 0, nothing erased yet) and a compaction (``compact``: trained without every
    erased sample), else the unlearning method's own; a method no longer registered counts
    as approximate (nothing proves otherwise)."""
    if method in (TRAIN_METHOD, COMPACT_METHOD):
        return Guarantee.EXACT
    impl = _METHODS.get(method)
    return impl.guarantee if impl is not None else Guarantee.APPROXIMATE


def validate_options(
    method: str | UnlearningMethod, options: Mapping[str, Any] | MethodOptions | None = None
) -> MethodOptions:
    """``options`` checked against the method's ``options_model``, defaults filled in.

    ``options`` is a plain mapping (from JSON, the CLI), an options object (returned as is
    when it is of the method's model; another method's object is checked name by name), or
    None (every default). A refused option raises :class:`OptionError` (a
    :class:`MethodError`, 422 in the API), naming the option and the method; an unknown
    option lists the method's options and which other methods take it.
    """
    impl = get_method(method) if isinstance(method, str) else method
    model = impl.options_model
    if options is None:
        raw: dict[str, Any] = {}
    elif isinstance(options, model):
        return options
    elif isinstance(options, MethodOptions):
        raw = options.model_dump(exclude_unset=True)
    elif isinstance(options, Mapping):
        raw = dict(options)
        bad = [k for k in raw if not isinstance(k, str)]
        if bad:
            raise OptionError(
                f"option names of method {impl.name!r} must be strings, got {bad[0]!r}",
                method=impl.name, options=[str(bad[0])],
            )
    else:
        raise OptionError(
            f"options of method {impl.name!r} must be an object of name: value, "
            f"got {type(options).__name__}",
            method=impl.name, options=[],
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        taken_by = {
            name: [m.name for m in _METHODS.values() if m is not impl and name in m.options_model.model_fields]
            for name in raw
            if name not in model.model_fields
        }
        raise explain(impl.name, model, exc, taken_by=taken_by) from None
    except LetheError as exc:  # a nested value's own check (e.g. PruneSearch's bounds)
        names = [k for k in raw if k in model.model_fields]
        raise OptionError(
            f"options of method {impl.name!r}: {exc}", method=impl.name, options=names
        ) from None


def method_catalog() -> list[dict[str, Any]]:
    """Every registered method with its guarantee, the training it needs and its options
    (``lethe methods``), generated from the classes and their options models."""
    return [
        {
            "name": m.name,
            "guarantee": str(m.guarantee),
            "trained_with": [str(t) for t in m.trained_with],
            "summary": m.summary,
            "options": describe_options(m.options_model),
        }
        for m in _METHODS.values()
    ]


#: Spacing of the recovery seeds of different ``seed`` options (a prime, far beyond any
#: lineage's version count, so two (option, version) pairs never share a seed in practice).
RECOVERY_SEED_STRIDE = 1_000_003


def recover(model: torch.nn.Module, ctx: UnlearnContext, *, optim: Any, batch_size: int, seed: int) -> float:
    """The optional recovery fine-tune on retained data; returns its seconds (0 if none).

    Its batches are drawn from ``seed`` (the method's, per lineage version) mixed with the
    request's ``seed`` option, so that runs with other seeds recover on other batches: the
    judge (bench/judge.py) needs the method's own randomness to vary, and seed 0 keeps the
    draws of before."""
    if ctx.options.recovery_steps <= 0:
        return 0.0
    seed = (seed + RECOVERY_SEED_STRIDE * ctx.options.seed) % 2**63
    if ctx.before_recovery is not None:
        ctx.before_recovery(model)
    retain = ctx.dataset.train.subset(ctx.retain_positions())
    return sgd_steps(
        model, retain, steps=ctx.options.recovery_steps, batch_size=batch_size, optim=optim,
        device=ctx.device, seed=seed,
    )
