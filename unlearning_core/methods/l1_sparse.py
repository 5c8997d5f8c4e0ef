"""l1-sparse unlearning (and its layer-wise partial variant): fine-tune on retained data
towards a sparse model.

Jia, Liu, Ram, Yao, Liu, Liu, Sharma and Liu (2023), "Model Sparsity Can Simplify Machine
Unlearning" (NeurIPS 2023; reference code OPTML-Group/Unlearn-Sparse, ``FT_l1``). The model
is fine-tuned on retained data only, descending

    CE(retained batch) + gamma_t * ||w||_1,    gamma_t = gamma * (1 - t / steps)

where ``||w||_1`` is the l1 norm of every trainable weight and the coefficient decays
linearly from ``gamma`` at the first step to zero: the early, strong l1 pressure shrinks
the weights that only the forget set needed (a sparser model forgets more easily), the
later steps restore accuracy on retained data. The forget set is never seen; it is only
left out of the batches.

Needs: retained data (the forget set only to leave it out; no teacher, no recording).
Trained with: any single-model training (``plain``, ``amnesiac``, ``partial-amnesiac``).
Guarantee: approximate, never exact. Deterministic for a given ``seed`` on a given device.
Cost: ``steps`` SGD steps. Gradients are clipped and a non-finite step undone
(:mod:`unlearning_core.methods.finetune`); ``--recovery-steps`` fine-tunes on retained data
afterwards, as for every approximate method.

``partial-l1-sparse`` scales each layer's step by its keep share ``1 - p_l``
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
    FinetuneOptions,
    FinetunePlan,
    StepContext,
    Tuning,
)
from unlearning_core.methods.options import MethodOptions, PruneOptions


class L1SparseOptions(FinetuneOptions):
    steps: int = Field(default=60, ge=1, le=1_000_000, description="SGD steps on retained data")
    gamma: float = Field(
        default=1e-2,
        gt=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="l1 coefficient at the first step; it decays linearly to 0 over the steps",
    )


class PartialL1SparseOptions(L1SparseOptions, PruneOptions):
    """l1-sparse's knobs plus the layer-wise pruning shares."""


def l1_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Sum of the absolute values of every entry of ``params``."""
    return torch.stack([p.abs().sum() for p in params]).sum()


@register_method
class L1SparseMethod(FinetuneMethod):
    """l1-sparse unlearning (Jia et al. 2023, "Model Sparsity Can Simplify Machine
    Unlearning"): fine-tune on retained data with an l1 penalty whose coefficient decays
    linearly from ``gamma`` to 0. Needs retained data; any single-model training (``plain``
    included); approximate guarantee; deterministic for a seed (see the module's docstring)."""

    name = "l1-sparse"
    summary = (
        "l1-sparse (Jia et al. 2023): fine-tune on retained data with an l1 penalty decaying "
        "linearly to 0; a few SGD steps"
    )
    options_model: ClassVar[type[MethodOptions]] = L1SparseOptions

    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        opts = ctx.options_as(L1SparseOptions)
        retain = retained_samples(ctx.dataset.train.subset(ctx.retain_positions()), self.name)
        rng = np.random.default_rng((opts.seed, 24))
        batches = BatchCycler.of(retain, batch_size=tune.batch_size, device=tune.device, rng=rng)
        params = [p for p in tune.model.parameters() if p.requires_grad]
        gamma, total = float(opts.gamma), tune.steps

        def next_batch(_step: int) -> Batch:
            return batches.next()

        def loss(model: torch.nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
            x, y = batch
            coefficient = gamma * (1.0 - step.step / total)
            return F.cross_entropy(model(x), y) + coefficient * l1_norm(params)

        return FinetunePlan(
            next_batch=next_batch,
            loss=loss,
            details={"gamma": gamma, "retain_per_batch": batches.size},
        )


@register_method
class PartialL1SparseMethod(L1SparseMethod):
    """l1-sparse with each layer's step scaled by its keep share ``1 - p_l`` (same paper, same
    needs and guarantee)."""

    name = "partial-l1-sparse"
    summary = "l1-sparse with each layer's step scaled by 1 - p_l (early layers barely move)"
    options_model = PartialL1SparseOptions
    partial = True
