"""Label flipping (and its layer-wise partial variant): fine-tune towards wrong labels.

Every forget sample gets a random label other than its own (seeded by ``options.seed``),
then the lineage head is fine-tuned on those relabelled samples for ``options.steps`` SGD
steps, optionally with a share ``options.mix_retain`` of each batch drawn from retained
samples with their true labels (which keeps the rest of the model in place). Cost: a few
SGD steps, independent of the training set's size; no guarantee, so report the metrics.

``partial-label-flip`` scales each layer's step by its keep share (see
:mod:`unlearning_core.methods.layerwise`), so early, generic layers barely move.
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
    check_finetune_options,
    check_no_prune,
    finetune,
    layer_scales,
    partial_schedule,
)
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.training.loop import OptimConfig

DEFAULT_STEPS = 20


def flip_labels(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """For each label, one drawn uniformly from the *other* classes (never the true one)."""
    if num_classes < 2:
        raise MethodError("label flipping needs at least two classes")
    rng = np.random.default_rng(seed)
    offsets = torch.as_tensor(rng.integers(1, num_classes, size=len(labels)), dtype=torch.int64)
    return (labels.detach().cpu().to(torch.int64) + offsets) % num_classes


def batch_split(
    batch_size: int, mix_retain: float, n_forget: int, n_retain: int
) -> tuple[int, int]:
    """(forget, retain) samples per batch: ``mix_retain`` of the batch retained, at least
    one forget sample; a forget set smaller than its share shrinks the batch, not the mix."""
    if not 0.0 <= mix_retain < 1.0:
        raise MethodError(f"mix_retain must be in [0, 1), got {mix_retain}")
    full_forget = max(1, batch_size - round(mix_retain * batch_size))
    forget = min(full_forget, n_forget)
    retain = (
        batch_size - full_forget
        if forget == full_forget
        else round(forget * mix_retain / (1 - mix_retain))
    )
    return forget, min(retain, n_retain)


@register_method
class LabelFlipMethod(UnlearningMethod):
    name = "label-flip"
    guarantee = "approximate"
    trained_with = SINGLE_MODEL_TRAINING
    summary = "fine-tune on the forget set relabelled with random wrong labels; a few SGD steps"
    partial = False

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: RecordedRun = ctx.artifact
        opts, t, device = ctx.options, run.spec.training, ctx.device
        check_finetune_options(self.name, opts)
        if self.partial:
            r = run.spec.recording
            schedule = partial_schedule((r.prune_first, r.prune_last), opts)
        else:
            check_no_prune(self.name, opts)
            schedule = None
        steps = DEFAULT_STEPS if opts.steps is None else opts.steps
        batch_size = opts.batch_size or t.batch_size
        optim = OptimConfig(lr=opts.lr or t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        model = run.model_with(run.load_weights(ctx.ledger.head.weights))
        scales = layer_scales(model, schedule)

        started = time.perf_counter()
        forget = ctx.dataset.train.subset(ctx.forget_positions)
        retain_pos = ctx.retain_positions() if opts.mix_retain > 0 else np.empty(0, dtype=np.int64)
        n_forget, n_retain = batch_split(batch_size, opts.mix_retain, len(forget), len(retain_pos))
        fx = forget.images.to(device)
        fy = flip_labels(forget.labels, ctx.dataset.num_classes, opts.seed).to(device)
        if n_retain > 0:
            retain = ctx.dataset.train.subset(retain_pos)
            rx, ry = retain.images.to(device), retain.labels.to(device)
        rng = np.random.default_rng((opts.seed, 1))

        def next_batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
            f = torch.as_tensor(rng.choice(len(fy), size=n_forget, replace=False), device=device)
            if n_retain == 0:
                return fx[f], fy[f]
            r = torch.as_tensor(rng.choice(len(ry), size=n_retain, replace=False), device=device)
            return torch.cat([fx[f], rx[r]]), torch.cat([fy[f], ry[r]])

        result = finetune(
            model, optim=optim, scales=scales, next_batch=next_batch, steps=steps, device=device
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
            "mix_retain": opts.mix_retain,
            "forget_per_batch": n_forget,
            "retain_per_batch": n_retain,
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
class PartialLabelFlipMethod(LabelFlipMethod):
    name = "partial-label-flip"
    summary = "label flipping with each layer's step scaled by 1 - p_l (early layers barely move)"
    partial = True
