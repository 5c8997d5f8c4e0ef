"""A toy unlearning method with an option of its own, registered by the tests.

It is what a user's method looks like: one module, an options model extending
:class:`MethodOptions`, one registration line (:func:`register`; a built-in puts
``@register_method`` on its class instead, and the tests unregister the toy again). It pulls the lineage head back towards
the run's initial weights, ``w <- w0 + (w - w0) / (1 + scale)``, so its result is known in
closed form: a test can tell from the weights alone that ``scale`` reached the method.
"""

from __future__ import annotations

import time

import torch
from pydantic import Field

from unlearning_core.methods import MethodOptions, register_method, unregister_method
from unlearning_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnOutcome, recover
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.vocab import SINGLE_MODEL_TRAINING, Guarantee

NAME = "toy-shrink"


class ToyOptions(MethodOptions):
    scale: float = Field(
        default=1.0, gt=0.0, le=10.0, description="shrink the distance to the initial weights by 1 + scale"
    )


def shrunk(
    head: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """The toy's result: float tensors pulled towards ``initial``, the rest unchanged."""
    return {
        k: initial[k] + (v - initial[k]) / (1.0 + scale) if torch.is_floating_point(v) else v
        for k, v in head.items()
    }


class ToyShrinkMethod(UnlearningMethod):
    name = NAME
    guarantee = Guarantee.APPROXIMATE
    trained_with = SINGLE_MODEL_TRAINING
    summary = "toy: pull the weights towards their initialisation by 1 + scale"
    options_model = ToyOptions

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: RecordedRun = ctx.artifact
        opts = ctx.options_as(ToyOptions)
        started = time.perf_counter()
        state = shrunk(
            run.load_weights(ctx.ledger.head.weights),
            run.load_weights(run.spec.initial_weights),
            opts.scale,
        )
        model = run.model_with(state)
        seconds = time.perf_counter() - started
        recovery = recover(
            model, ctx, optim=run.optim(), batch_size=run.spec.training.batch_size,
            seed=run.spec.training.seed,
        )
        return UnlearnOutcome(
            model=model.cpu(), unlearn_seconds=seconds, recovery_seconds=recovery,
            details={"toy_scale": opts.scale},
        )


def register() -> None:
    """The registration line."""
    register_method(ToyShrinkMethod)


def unregister() -> None:
    unregister_method(NAME)
