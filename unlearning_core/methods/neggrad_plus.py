"""NegGrad+ (and its layer-wise partial variant): ascent on the forget set, descent on the rest.

Kurmanji, Triantafillou, Hayes and Triantafillou (2023), "Towards Unbounded Machine
Unlearning" (NeurIPS 2023), use NegGrad+ as their strongest fine-tune baseline: every step
descends the combined loss

    alpha * CE(retained batch) - (1 - alpha) * CE(forget batch)

so the climb on the forget set (plain negative gradient) is balanced by ordinary training
on retained data, which keeps the rest of the model in place. Each step draws one batch of
each (``batch_size`` samples, seeded shuffled passes over both sets). As ``neg-grad`` does,
it stops once the forget accuracy is at or below ``target_forget_acc`` (default: 0 when the
forget set is whole classes, what a model retrained without them shows, else the model's
test accuracy): the climb has no minimum, and past that point it only wears down the rest
of the model (the paper tunes its epochs on validation data instead).

Needs: the forget set and retained data (no teacher, no recording). Trained with: any
single-model training (``plain``, ``amnesiac``, ``partial-amnesiac``). Guarantee:
approximate, never exact: the weights are fine-tuned, not retrained, so report the metrics.
Deterministic for a given ``seed`` on a given device (CPU bit for bit). Cost: at most
``steps`` SGD steps on two batches each, plus a forward pass over the forget set after each.
Gradients are clipped and a non-finite step undone (:mod:`unlearning_core.methods.finetune`);
``--recovery-steps`` fine-tunes on retained data afterwards, as for every approximate method.

``partial-neggrad-plus`` scales each layer's step by its keep share ``1 - p_l``
(:mod:`unlearning_core.methods.layerwise`), so early, generic layers barely move.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from unlearning_core.methods.base import UnlearnContext, register_method
from unlearning_core.methods.batches import BatchCycler, retained_samples
from unlearning_core.methods.finetune import (
    Batch,
    FinetuneMethod,
    FinetunePlan,
    FinetuneResult,
    StepContext,
    Tuning,
    accuracy_on,
)
from unlearning_core.methods.neg_grad import NegGradOptions, forgets_whole_classes
from unlearning_core.methods.options import MethodOptions, PruneOptions


class NegGradPlusOptions(NegGradOptions):
    steps: int = Field(
        default=50, ge=1, le=1_000_000, description="SGD steps at most (fewer if it stops early)"
    )
    alpha: float = Field(
        default=0.95,
        gt=0.0,
        lt=1.0,
        description="weight of the retained loss; the forget loss is climbed with weight 1 - alpha",
    )


class PartialNegGradPlusOptions(NegGradPlusOptions, PruneOptions):
    """NegGrad+'s knobs plus the layer-wise pruning shares."""


def forget_target(
    ctx: UnlearnContext,
    model: torch.nn.Module,
    device: torch.device,
    retain_positions: np.ndarray,
    given: float | None,
) -> tuple[float, str]:
    """The forget accuracy to stop at, and where it comes from (as ``neg-grad`` sets it):
    the option, else 0 when the forget set is whole classes, else the model's test accuracy."""
    if given is not None:
        return float(given), "option"
    if forgets_whole_classes(
        ctx.dataset.train.labels.numpy(), ctx.forget_positions, retain_positions
    ):
        return 0.0, "class"
    test = ctx.dataset.test
    return accuracy_on(model, test.images.to(device), test.labels.to(device)), "test_acc"


@register_method
class NegGradPlusMethod(FinetuneMethod):
    """NegGrad+ (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): descend
    ``alpha * CE(retained) - (1 - alpha) * CE(forget)`` until the forget accuracy reaches its
    target. Needs the forget set and retained data; any single-model training (``plain``
    included); approximate guarantee; deterministic for a seed (see the module's docstring)."""

    name = "neggrad-plus"
    summary = (
        "NegGrad+ (Kurmanji et al. 2023): descend alpha * retained loss - (1 - alpha) * "
        "forget loss; a few SGD steps"
    )
    options_model: ClassVar[type[MethodOptions]] = NegGradPlusOptions

    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        opts, device, model = ctx.options_as(NegGradPlusOptions), tune.device, tune.model
        train = ctx.dataset.train
        retain_pos = ctx.retain_positions()
        retain = retained_samples(train.subset(retain_pos), self.name)
        forget = train.subset(ctx.forget_positions)
        fx, fy = forget.images.to(device), forget.labels.to(device)
        target, source = forget_target(ctx, model, device, retain_pos, opts.target_forget_acc)
        rng = np.random.default_rng((opts.seed, 21))
        forget_batches = BatchCycler.of(forget, batch_size=tune.batch_size, device=device, rng=rng)
        retain_batches = BatchCycler.of(retain, batch_size=tune.batch_size, device=device, rng=rng)
        splits: list[int] = []  # per step: how many forget samples lead its batch
        alpha = float(opts.alpha)

        def next_batch(step: int) -> Batch:
            fx, fy = forget_batches.next()
            rx, ry = retain_batches.next()
            splits.append(len(fy))
            return torch.cat([fx, rx]), torch.cat([fy, ry])

        def loss(model: torch.nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
            (x, y), k = batch, splits[step.step]
            forget_loss = F.cross_entropy(model(x[:k]), y[:k])
            retain_loss = F.cross_entropy(model(x[k:]), y[k:])
            return alpha * retain_loss - (1.0 - alpha) * forget_loss

        def finish(result: FinetuneResult) -> dict[str, object]:
            return {"target_reached": result.reached, "stopped_early": result.stopped_early}

        return FinetunePlan(
            next_batch=next_batch,
            loss=loss,
            stop=lambda: accuracy_on(model, fx, fy) <= target,
            finish=finish,
            details={
                "alpha": alpha,
                "target_forget_acc": target,
                "target_source": source,
                "forget_per_batch": forget_batches.size,
                "retain_per_batch": retain_batches.size,
            },
        )


@register_method
class PartialNegGradPlusMethod(NegGradPlusMethod):
    """NegGrad+ with each layer's step scaled by its keep share ``1 - p_l`` (same paper, same
    needs and guarantee)."""

    name = "partial-neggrad-plus"
    summary = "NegGrad+ with each layer's step scaled by 1 - p_l (early layers barely move)"
    options_model = PartialNegGradPlusOptions
    partial = True
