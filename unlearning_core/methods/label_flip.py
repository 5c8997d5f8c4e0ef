"""Label flipping (and its layer-wise partial variant): fine-tune towards wrong labels.

Every forget sample gets a random label other than its own (seeded by ``options.seed``),
then the lineage head is fine-tuned on those relabelled samples for ``options.steps`` SGD
steps, optionally with a share ``options.mix_retain`` of each batch drawn from retained
samples with their true labels (which keeps the rest of the model in place). Cost: a few
SGD steps, independent of the training set's size; no guarantee, so report the metrics.

``partial-label-flip`` scales each layer's step by its keep share (see
:mod:`unlearning_core.methods.layerwise`), so early, generic layers barely move. The
fine-tune itself (optimiser, loop, recovery, figures) is
:class:`~unlearning_core.methods.finetune.FinetuneMethod`'s.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from unlearning_core.errors import MethodError
from unlearning_core.methods.base import UnlearnContext, register_method
from unlearning_core.methods.finetune import (
    Batch,
    FinetuneMethod,
    FinetuneOptions,
    FinetunePlan,
    Tuning,
    cross_entropy,
)
from unlearning_core.methods.options import MethodOptions, PruneOptions


class LabelFlipOptions(FinetuneOptions):
    mix_retain: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="share of each batch drawn from retained samples with their true labels "
        "(holds the rest of the model in place)",
    )


class PartialLabelFlipOptions(LabelFlipOptions, PruneOptions):
    """Label flipping's knobs plus the layer-wise pruning shares."""


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
class LabelFlipMethod(FinetuneMethod):
    name = "label-flip"
    summary = "fine-tune on the forget set relabelled with random wrong labels; a few SGD steps"
    options_model: ClassVar[type[MethodOptions]] = LabelFlipOptions

    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        opts, device = ctx.options_as(LabelFlipOptions), tune.device
        forget = ctx.dataset.train.subset(ctx.forget_positions)
        retain_pos = ctx.retain_positions() if opts.mix_retain > 0 else np.empty(0, dtype=np.int64)
        n_forget, n_retain = batch_split(tune.batch_size, opts.mix_retain, len(forget), len(retain_pos))
        fx = forget.images.to(device)
        fy = flip_labels(forget.labels, ctx.dataset.num_classes, opts.seed).to(device)
        if n_retain > 0:
            retain = ctx.dataset.train.subset(retain_pos)
            rx, ry = retain.images.to(device), retain.labels.to(device)
        rng = np.random.default_rng((opts.seed, 1))

        def next_batch(_step: int) -> Batch:
            f = torch.as_tensor(rng.choice(len(fy), size=n_forget, replace=False), device=device)
            if n_retain == 0:
                return fx[f], fy[f]
            r = torch.as_tensor(rng.choice(len(ry), size=n_retain, replace=False), device=device)
            return torch.cat([fx[f], rx[r]]), torch.cat([fy[f], ry[r]])

        return FinetunePlan(
            next_batch=next_batch,
            loss=cross_entropy,
            details={
                "mix_retain": opts.mix_retain,
                "forget_per_batch": n_forget,
                "retain_per_batch": n_retain,
            },
        )


@register_method
class PartialLabelFlipMethod(LabelFlipMethod):
    name = "partial-label-flip"
    summary = "label flipping with each layer's step scaled by 1 - p_l (early layers barely move)"
    options_model = PartialLabelFlipOptions
    partial = True
