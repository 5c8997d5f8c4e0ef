"""Negative gradient (and its layer-wise partial variant): gradient ascent on the forget set.

The lineage head climbs the cross-entropy of the forget samples (true labels) for at most
``options.steps`` SGD steps, checking the forget accuracy after each step and stopping once
it is at or below the target: ``options.target_forget_acc`` if given, else what a model
retrained without the forget set would show — 0 when the forget set holds every (still
retained) training sample of each of its classes, otherwise the head's test accuracy.
Gradients are clipped and non-finite steps undone (see
:mod:`unlearning_core.methods.layerwise`), since ascent has no minimum to stop at.
Cost: a few SGD steps plus one forward pass over the forget set per step.

``partial-neg-grad`` scales each layer's step by its keep share, so early, generic layers
barely move.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from unlearning_core.errors import MethodError
from unlearning_core.methods.base import (
    SINGLE_MODEL_TRAINING,
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    recover,
    register_method,
)
from unlearning_core.methods.layerwise import (
    accuracy_on,
    check_finetune_options,
    check_no_prune,
    finetune,
    layer_scales,
    partial_schedule,
)
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.training.loop import OptimConfig

DEFAULT_STEPS = 20


def forgets_whole_classes(
    labels: np.ndarray, forget_positions: np.ndarray, retain_positions: np.ndarray
) -> bool:
    """True when no retained training sample shares a class with the forget set."""
    return not np.isin(labels[retain_positions], np.unique(labels[forget_positions])).any()


@register_method
class NegGradMethod(UnlearningMethod):
    name = "neg-grad"
    guarantee = "approximate"
    trained_with = SINGLE_MODEL_TRAINING
    summary = (
        "gradient ascent on the forget set until its accuracy reaches a target; a few SGD steps"
    )
    partial = False

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: RecordedRun = ctx.artifact
        opts, t, device = ctx.options, run.spec.training, ctx.device
        check_finetune_options(self.name, opts)
        if opts.target_forget_acc is not None and not 0.0 <= opts.target_forget_acc <= 1.0:
            raise MethodError(f"target_forget_acc must be in [0, 1], got {opts.target_forget_acc}")
        if self.partial:
            r = run.spec.recording
            schedule = partial_schedule((r.prune_first, r.prune_last), opts)
        else:
            check_no_prune(self.name, opts)
            schedule = None
        steps = DEFAULT_STEPS if opts.steps is None else opts.steps
        batch_size = opts.batch_size or t.batch_size
        optim = OptimConfig(lr=opts.lr or t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        model = run.model_with(run.load_weights(ctx.ledger.head.weights)).to(device)
        scales = layer_scales(model, schedule)

        started = time.perf_counter()
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
        n = min(batch_size, len(fy))

        def next_batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
            f = torch.as_tensor(rng.choice(len(fy), size=n, replace=False), device=device)
            return fx[f], fy[f]

        result = finetune(
            model,
            optim=optim,
            scales=scales,
            next_batch=next_batch,
            steps=steps,
            device=device,
            ascent=True,
            stop=lambda: accuracy_on(model, fx, fy) <= target,
        )
        unlearn_seconds = time.perf_counter() - started
        recovery_seconds = recover(
            model,
            ctx,
            optim=run.optim(),
            batch_size=batch_size,
            seed=t.seed + len(ctx.ledger.versions),
        )
        details = {
            "steps": result.steps,
            "target_forget_acc": target,
            "target_source": source,
            "target_reached": result.reached,
            "stopped_early": result.stopped_early,
            "lr": optim.lr,
            "diverged": result.diverged,
            "layer_step_scale": scales,
        }
        if schedule is not None:
            details.update(prune_first=schedule.first, prune_last=schedule.last)
        return UnlearnOutcome(
            model=model.cpu(),
            unlearn_seconds=unlearn_seconds,
            recovery_seconds=recovery_seconds,
            changed=result.steps > 0 or opts.recovery_steps > 0,
            details=details,
        )


@register_method
class PartialNegGradMethod(NegGradMethod):
    name = "partial-neg-grad"
    summary = (
        "negative gradient with each layer's step scaled by 1 - p_l (early layers barely move)"
    )
    partial = True
