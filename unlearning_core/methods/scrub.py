"""SCRUB (and its layer-wise partial variant): a student that leaves its teacher on the forget set.

Kurmanji, Triantafillou, Hayes and Triantafillou (2023), "Towards Unbounded Machine
Unlearning" (NeurIPS 2023). The teacher is the model being unlearned (the lineage head),
frozen; the student starts as a copy of it and is trained to

- *max-steps*: move away from the teacher on the forget set, climbing
  ``KL(teacher || student)`` of their temperature-softened outputs on forget batches;
- *min-steps*: stay with the teacher and keep its task on retained data, descending
  ``alpha * KL(teacher || student) + gamma * CE(student, labels)`` on retained batches.

Each of ``epochs`` SCRUB epochs runs a max phase (``max_steps`` forget batches, default one
pass over the forget set) while the epoch is among the first ``max_epochs``, then a min
phase of ``steps`` retained batches; later epochs are min-steps only, which repairs what
the max-steps broke (the paper's alternation, as in its reference code meghdadk/SCRUB,
whose KL is scaled by ``temperature**2``). The optional "rewind" to an earlier checkpoint
is left out. ``alpha`` and ``gamma`` keep the paper's names (its equation 3): with the
defaults a min-step descends KL + CE.

Needs: the forget set, retained data and the original model as the teacher (no recording).
Trained with: any single-model training (``plain``, ``amnesiac``, ``partial-amnesiac``).
Guarantee: approximate, never exact. Deterministic for a given ``seed`` on a given device.
Cost: ``epochs * steps + min(max_epochs, epochs) * max_steps`` SGD steps, each with one
extra forward pass of the teacher. Gradients are clipped and a non-finite step undone
(:mod:`unlearning_core.methods.finetune`); ``--recovery-steps`` fine-tunes on retained data
afterwards, as for every approximate method.

``partial-scrub`` scales each layer's step by its keep share ``1 - p_l``
(:mod:`unlearning_core.methods.layerwise`), so early, generic layers barely move.
"""

from __future__ import annotations

import copy
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
    FinetuneResult,
    StepContext,
    Tuning,
)
from unlearning_core.methods.options import MethodOptions, PruneOptions


class ScrubOptions(FinetuneOptions):
    steps: int = Field(
        default=15,
        ge=1,
        le=1_000_000,
        description="min-steps (retained batches) per SCRUB epoch",
    )
    epochs: int = Field(default=4, ge=1, le=10_000, description="SCRUB epochs")
    max_epochs: int = Field(
        default=3,
        ge=0,
        le=10_000,
        description="epochs that start with max-steps on the forget set (msteps; at most "
        "epochs count)",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="max-steps (forget batches) per max phase [default: one pass over the "
        "forget set]",
    )
    temperature: float = Field(
        default=4.0,
        gt=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="softmax temperature of the teacher-student KL",
    )
    alpha: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="weight of KL(teacher || student) on retained batches (min-steps)",
    )
    gamma: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="weight of the cross-entropy on retained batches (min-steps)",
    )


class PartialScrubOptions(ScrubOptions, PruneOptions):
    """SCRUB's knobs plus the layer-wise pruning shares."""


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(teacher || student)`` of the softened outputs, per sample, times ``T**2``."""
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def schedule(epochs: int, max_epochs: int, max_steps: int, min_steps: int) -> list[bool]:
    """Per step, True for a max-step (forget batch) and False for a min-step (retained)."""
    out: list[bool] = []
    for epoch in range(epochs):
        if epoch < max_epochs:
            out += [True] * max_steps
        out += [False] * min_steps
    return out


@register_method
class ScrubMethod(FinetuneMethod):
    """SCRUB (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): a student of
    the frozen original climbs ``KL(teacher || student)`` on the forget set (max-steps) and
    descends ``alpha * KL + gamma * CE`` on retained data (min-steps). Needs the forget set,
    retained data and the original model as teacher; any single-model training (``plain``
    included); approximate guarantee; deterministic for a seed (see the module's docstring)."""

    name = "scrub"
    summary = (
        "SCRUB (Kurmanji et al. 2023): a student of the original model climbs their KL on "
        "the forget set and descends KL + CE on retained data, in alternating epochs"
    )
    options_model: ClassVar[type[MethodOptions]] = ScrubOptions

    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        opts = ctx.options_as(ScrubOptions)
        train, device = ctx.dataset.train, tune.device
        retain = retained_samples(train.subset(ctx.retain_positions()), self.name)
        rng = np.random.default_rng((opts.seed, 22))
        forget_batches = BatchCycler.of(
            train.subset(ctx.forget_positions), batch_size=tune.batch_size, device=device, rng=rng
        )
        retain_batches = BatchCycler.of(retain, batch_size=tune.batch_size, device=device, rng=rng)
        teacher = copy.deepcopy(tune.model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        max_epochs = min(opts.max_epochs, opts.epochs)
        max_steps = opts.max_steps or forget_batches.batches_per_pass
        kinds = schedule(opts.epochs, max_epochs, max_steps, opts.steps)
        temperature, alpha, gamma = float(opts.temperature), float(opts.alpha), float(opts.gamma)

        def next_batch(step: int) -> Batch:
            return forget_batches.next() if kinds[step] else retain_batches.next()

        def loss(model: torch.nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
            x, y = batch
            with torch.no_grad():
                target = teacher(x)
            logits = model(x)
            kl = distill_kl(logits, target, temperature)
            if kinds[step.step]:  # max-step: leave the teacher on the forget set
                return -kl
            return alpha * kl + gamma * F.cross_entropy(logits, y)

        def finish(result: FinetuneResult) -> dict[str, object]:
            done = kinds[: result.steps]
            return {"max_steps_taken": sum(done), "min_steps_taken": len(done) - sum(done)}

        return FinetunePlan(
            steps=len(kinds),  # the whole alternating schedule
            next_batch=next_batch,
            loss=loss,
            details={
                "epochs": opts.epochs,
                "max_epochs": max_epochs,
                "max_steps_per_epoch": max_steps,
                "min_steps_per_epoch": opts.steps,
                "temperature": temperature,
                "alpha": alpha,
                "gamma": gamma,
            },
            finish=finish,
        )


@register_method
class PartialScrubMethod(ScrubMethod):
    """SCRUB with each layer's step scaled by its keep share ``1 - p_l`` (same paper, same
    needs and guarantee)."""

    name = "partial-scrub"
    summary = "SCRUB with each layer's step scaled by 1 - p_l (early layers barely move)"
    options_model = PartialScrubOptions
    partial = True
