"""SalUn (and its layer-wise partial variant): random-label fine-tuning of the salient weights only.

Fan, Liu, Zhang, Wong, Wei and Liu (2024), "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency" (ICLR 2024; reference code OPTML-Group/Unlearn-Saliency).

1. *Saliency mask.* The gradient of the cross-entropy of the forget set (true labels, the
   model in eval mode) with respect to every weight is taken once; the ``threshold`` share
   of all weight entries with the largest gradient magnitude, ranked across the whole model
   (as the reference code's hard threshold does), are *salient*; the rest are frozen.
2. *Random labelling.* Every forget sample gets a random label other than its own (seeded),
   and the model is fine-tuned for ``steps`` SGD steps on batches that mix those relabelled
   samples with retained samples and their true labels (``mix_retain`` of each batch),
   with each gradient multiplied by the mask, so only salient weights move. Weight decay
   is folded into the masked gradient too: a frozen weight stays bit for bit as it was
   (until the optional ``--recovery-steps`` fine-tune, which trains every weight).

Needs: the forget set and retained data (no teacher, no recording). Trained with: any
single-model training (``plain``, ``amnesiac``, ``partial-amnesiac``). Guarantee:
approximate, never exact. Deterministic for a given ``seed`` on a given device. Cost: one
pass of gradients over the forget set, a sort of the gradient magnitudes, and ``steps``
SGD steps.

``partial-salun`` scales each layer's step by its keep share ``1 - p_l``
(:mod:`unlearning_core.methods.layerwise`) on top of the mask.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from unlearning_core.data import SampleSet
from unlearning_core.errors import MethodError
from unlearning_core.methods.base import UnlearnContext, register_method
from unlearning_core.methods.batches import BatchCycler
from unlearning_core.methods.finetune import (
    Batch,
    FinetuneMethod,
    FinetuneOptions,
    FinetunePlan,
    Tuning,
    cross_entropy,
)
from unlearning_core.methods.label_flip import batch_split, flip_labels
from unlearning_core.methods.options import MethodOptions, PruneOptions


class SalunOptions(FinetuneOptions):
    threshold: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="share of weight entries made salient (largest forget-loss gradient "
        "magnitude, ranked over the whole model); only those are updated",
    )
    mix_retain: float = Field(
        default=0.75,
        ge=0.0,
        lt=1.0,
        description="share of each batch drawn from retained samples with their true labels",
    )


class PartialSalunOptions(SalunOptions, PruneOptions):
    """SalUn's knobs plus the layer-wise pruning shares."""


def forget_gradients(
    model: torch.nn.Module, forget: SampleSet, *, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The gradient of the mean cross-entropy over the forget set, per trainable parameter
    (eval mode: BatchNorm statistics are used, not updated)."""
    was_training = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    n = len(forget)
    for start in range(0, n, batch_size):
        x = forget.images[start : start + batch_size].to(device)
        y = forget.labels[start : start + batch_size].to(device)
        loss = F.cross_entropy(model(x), y, reduction="sum") / n
        parts = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, g in zip(params, parts, strict=True):
            if g is not None:
                grads[name] += g
    model.train(was_training)
    return grads


def saliency_mask(grads: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Per parameter, 1.0 where the entry is among the ``threshold`` share of all entries
    with the largest gradient magnitude (ranked across every parameter), else 0.0."""
    if not 0.0 < threshold <= 1.0:
        raise MethodError(f"threshold must be in (0, 1], got {threshold}")
    flat = torch.cat([g.detach().abs().flatten() for g in grads.values()])
    keep = min(len(flat), max(1, round(threshold * len(flat))))
    chosen = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    if keep == len(flat):
        chosen[:] = True
    else:
        chosen[torch.topk(flat, keep, sorted=False).indices] = True
    masks: dict[str, torch.Tensor] = {}
    at = 0
    for name, g in grads.items():
        size = g.numel()
        masks[name] = chosen[at : at + size].view_as(g).to(g.dtype)
        at += size
    return masks


@register_method
class SalunMethod(FinetuneMethod):
    """SalUn (Fan et al. 2024, "SalUn: Empowering Machine Unlearning via Gradient-based
    Weight Saliency"): random-label fine-tuning with retained data, updating only the
    ``threshold`` share of weights with the largest forget-loss gradient. Needs the forget
    set and retained data; any single-model training (``plain`` included); approximate
    guarantee; deterministic for a seed (see the module's docstring)."""

    name = "salun"
    summary = (
        "SalUn (Fan et al. 2024): random-label fine-tuning with retained data, updating only "
        "the weights most salient to the forget loss"
    )
    options_model: ClassVar[type[MethodOptions]] = SalunOptions

    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        opts, device, model = ctx.options_as(SalunOptions), tune.device, tune.model
        train = ctx.dataset.train
        forget = train.subset(ctx.forget_positions)
        masks = saliency_mask(
            forget_gradients(model, forget, batch_size=tune.batch_size, device=device),
            opts.threshold,
        )
        retain_pos = ctx.retain_positions() if opts.mix_retain > 0 else np.empty(0, dtype=np.int64)
        n_forget, n_retain = batch_split(
            tune.batch_size, opts.mix_retain, len(forget), len(retain_pos)
        )
        rng = np.random.default_rng((opts.seed, 23))
        flipped = flip_labels(forget.labels, ctx.dataset.num_classes, opts.seed)
        forget_batches = BatchCycler.of(
            forget, batch_size=n_forget, device=device, rng=rng, labels=flipped
        )
        retain_batches = (
            BatchCycler.of(
                train.subset(retain_pos),
                batch_size=n_retain,
                device=device,
                rng=rng,
            )
            if n_retain > 0
            else None
        )
        # Weight decay goes into the masked gradient (below), not the optimiser: a frozen
        # weight must not decay either (the plan's own optimiser settings).
        decay = tune.optim.weight_decay
        optim = dataclasses.replace(tune.optim, weight_decay=0.0)
        named = [(p, masks[n]) for n, p in model.named_parameters() if n in masks]

        def next_batch(_step: int) -> Batch:
            fx, fy = forget_batches.next()
            if retain_batches is None:
                return fx, fy
            rx, ry = retain_batches.next()
            return torch.cat([fx, rx]), torch.cat([fy, ry])

        @torch.no_grad()
        def mask_gradients(_model: torch.nn.Module) -> None:
            for p, m in named:
                if p.grad is None:
                    continue
                if decay:
                    p.grad.add_(p, alpha=decay)
                p.grad.mul_(m)

        salient = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        return FinetunePlan(
            optim=optim,
            next_batch=next_batch,
            loss=cross_entropy,
            after_backward=mask_gradients,
            details={
                "threshold": opts.threshold,
                "salient_weights": salient,
                "salient_share": salient / max(1, total),
                "mix_retain": opts.mix_retain,
                "forget_per_batch": forget_batches.size,
                "retain_per_batch": 0 if retain_batches is None else retain_batches.size,
            },
        )


@register_method
class PartialSalunMethod(SalunMethod):
    """SalUn with each layer's step scaled by its keep share ``1 - p_l`` (same paper, same
    needs and guarantee)."""

    name = "partial-salun"
    summary = "SalUn with each layer's step scaled by 1 - p_l (early layers barely move)"
    options_model = PartialSalunOptions
    partial = True
