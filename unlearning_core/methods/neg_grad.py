"""Negative gradient (and its layer-wise partial variant): gradient ascent on the forget set.

The lineage head climbs the cross-entropy of the forget samples (true labels) for at most
``options.steps`` SGD steps, checking the forget accuracy after each step and stopping once
it is at or below the target: ``options.target_forget_acc`` if given, else what a model
retrained without the forget set would show — 0 when the forget set holds every (still
retained) training sample of each of its classes, otherwise the head's test accuracy.
Gradients are clipped and non-finite steps undone (see
:mod:`unlearning_core.methods.finetune`, whose loop this is with the cross-entropy negated),
since ascent has no minimum to stop at.
Cost: a few SGD steps plus one forward pass over the forget set per step.

``partial-neg-grad`` scales each layer's step by its keep share, so early, generic layers
barely move.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from unlearning_core.methods.base import UnlearnContext, register_method
from unlearning_core.methods.finetune import (
    Batch,
    FinetuneMethod,
    FinetuneOptions,
    FinetunePlan,
    FinetuneResult,
    Tuning,
    accuracy_on,
    ascent,
    cross_entropy,
)
from unlearning_core.methods.options import MethodOptions, PruneOptions


class NegGradOptions(FinetuneOptions):
    target_forget_acc: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="stop once the forget accuracy is at most this [default: 0 when the "
        "forget set is whole classes, else the model's test accuracy]",
    )


class PartialNegGradOptions(NegGradOptions, PruneOptions):
    """Negative gradient's knobs plus the layer-wise pruning shares."""


def forgets_whole_classes(
    labels: np.ndarray, forget_positions: np.ndarray, retain_positions: np.ndarray
) -> bool:
    """True when no retained training sample shares a class with the forget set."""
    return not np.isin(labels[retain_positions], np.unique(labels[forget_positions])).any()


@register_method
class NegGradMethod(FinetuneMethod):
    name = "neg-grad"
    summary = (
        "gradient ascent on the forget set until its accuracy reaches a target; a few SGD steps"
    )
    options_model: ClassVar[type[MethodOptions]] = NegGradOptions

    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        opts, device, model = ctx.options_as(NegGradOptions), tune.device, tune.model
        forget = ctx.dataset.train.subset(ctx.forget_positions)
        fx, fy = forget.images.to(device), forget.labels.to(device)
        if opts.target_forget_acc is not None:
            target, source = float(opts.target_forget_acc), "option"
        elif forgets_whole_classes(
            ctx.dataset.train.labels.numpy(), ctx.forget_positions, ctx.retain_positions()
        ):
            target, source = 0.0, "class"
        else:
            test = ctx.dataset.test
            target = accuracy_on(model, test.images.to(device), test.labels.to(device))
            source = "test_acc"
        rng = np.random.default_rng((opts.seed, 2))
        n = min(tune.batch_size, len(fy))

        def next_batch(_step: int) -> Batch:
            f = torch.as_tensor(rng.choice(len(fy), size=n, replace=False), device=device)
            return fx[f], fy[f]

        def finish(result: FinetuneResult) -> dict[str, object]:
            return {
                "target_reached": result.reached,
                "stopped_early": result.stopped_early,
            }

        return FinetunePlan(
            next_batch=next_batch,
            loss=ascent(cross_entropy),
            stop=lambda: accuracy_on(model, fx, fy) <= target,
            details={"target_forget_acc": target, "target_source": source},
            finish=finish,
        )


@register_method
class PartialNegGradMethod(NegGradMethod):
    name = "partial-neg-grad"
    summary = (
        "negative gradient with each layer's step scaled by 1 - p_l (early layers barely move)"
    )
    options_model = PartialNegGradOptions
    partial = True
