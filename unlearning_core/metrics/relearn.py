"""Relearn time: how many fine-tuning steps on the forget set bring its accuracy back.

A model that merely hides the forget data (small weight change) relearns it in a few
steps; one that truly lost it needs about as many as a model that never saw it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from unlearning_core.data import SampleSet
from unlearning_core.metrics.classification import accuracy
from unlearning_core.metrics.outputs import collect_outputs
from unlearning_core.metrics.registry import MetricContext, register_metric
from unlearning_core.training.loop import OptimConfig


def relearn_steps(
    model: torch.nn.Module,
    forget: SampleSet,
    *,
    target_acc: float,
    optim: OptimConfig,
    batch_size: int,
    device: torch.device,
    max_steps: int = 100,
    seed: int = 0,
) -> tuple[int, bool]:
    """(steps taken, whether ``target_acc`` was reached); the model itself is not touched."""
    if len(forget) == 0:
        return 0, True
    probe = copy.deepcopy(model).to(device)
    if (accuracy(collect_outputs(probe, forget, device=device)) or 0.0) >= target_acc:
        return 0, True
    optimizer = optim.build(probe)
    images, labels = forget.images.to(device), forget.labels.to(device)
    rng = np.random.default_rng(seed)
    for step in range(1, max_steps + 1):
        probe.train()
        pos = rng.choice(len(forget), size=min(batch_size, len(forget)), replace=False)
        idx = torch.as_tensor(pos, dtype=torch.long, device=device)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(probe(images[idx]), labels[idx]).backward()
        optimizer.step()
        if (accuracy(collect_outputs(probe, forget, device=device)) or 0.0) >= target_acc:
            return step, True
    return max_steps, False


def _relearn(ctx: MetricContext) -> tuple[int, bool]:
    """One probe for both registered values (it trains: never run it twice per model)."""
    assert ctx.original_forget_acc is not None and ctx.relearn is not None
    return ctx.memo(
        "relearn",
        lambda: relearn_steps(
            ctx.model, ctx.forget_samples, target_acc=ctx.original_forget_acc, optim=ctx.relearn,
            batch_size=ctx.relearn_batch_size, device=ctx.device, max_steps=ctx.relearn_max_steps,
            seed=ctx.seed,
        ),
    )


@register_metric(
    "relearn_steps", label="Relearn steps", direction="higher", fmt="d", cost="expensive",
    needs=("original_forget_acc", "relearn"),
)
def _relearn_steps(ctx: MetricContext) -> int:
    """Fine-tuning steps on the forget set until it is back to the trained model's accuracy."""
    return _relearn(ctx)[0]


@register_metric(
    "relearn_reached", label="Relearn target reached", direction=None, kind="flag", cost="expensive",
    needs=("original_forget_acc", "relearn"),
)
def _relearn_reached(ctx: MetricContext) -> bool:
    """Whether ``relearn_steps`` reached the target within its step budget."""
    return _relearn(ctx)[1]
