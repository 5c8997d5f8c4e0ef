"""Repairing BatchNorm running statistics after recorded updates are subtracted.

A BatchNorm layer's running mean and variance are exponential moving averages, not
gradient-learned weights. The recorder stores their per-step change like any other float
state, and subtracting the summed changes of *some* steps returns the initial value plus
the changes of the others, which is not the moving average of any data: a variance can go
negative (seen on resnet18 with digits, and ResNet-50 on Fashion-MNIST collapsed to NaN
outputs, predicting class 0 everywhere). Such a layer then divides by the square root of a
negative number.

The repair re-estimates the statistics of the unlearned weights on retained data only
(forward passes in training mode, no gradient, a cumulative average as
``torch.optim.swa_utils.update_bn`` does), so no forgotten sample enters them. ``auto``
repairs only when a statistic is invalid, which keeps plain subtraction exact whenever it
yields a valid state (subtracting every update still returns the initial weights);
``always`` re-estimates whenever the model has BatchNorm; ``never`` leaves the subtracted
values.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from unlearning_core.data import SampleSet

BnRepair = Literal["auto", "always", "never"]
BN_REPAIR_MODES: tuple[str, ...] = ("auto", "always", "never")
#: Retained samples the statistics are re-estimated on (enough for a stable mean/variance).
DEFAULT_BN_SAMPLES = 2048


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def invalid_batchnorm(model: torch.nn.Module) -> list[str]:
    """Names of BatchNorm layers whose running variance is non-positive or not finite."""
    bad = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.running_var is not None:
            var, mean = m.running_var, m.running_mean
            if not bool(torch.isfinite(var).all() and torch.isfinite(mean).all() and (var > 0).all()):
                bad.append(name)
    return bad


@torch.no_grad()
def reestimate_batchnorm(
    model: torch.nn.Module,
    retain: SampleSet,
    *,
    device: torch.device,
    batch_size: int,
    max_samples: int = DEFAULT_BN_SAMPLES,
    seed: int = 0,
) -> int:
    """Recompute every BatchNorm layer's running statistics on retained samples.

    Returns how many samples were used (0: nothing to do or no retained data). Other
    weights are untouched; the model is left in eval mode.
    """
    layers = batchnorm_layers(model)
    if not layers or len(retain) == 0:
        return 0
    n = min(len(retain), max_samples)
    pos = np.sort(np.random.default_rng(seed).choice(len(retain), size=n, replace=False))
    images = retain.images[torch.as_tensor(pos, dtype=torch.long)]
    momenta = {m: m.momentum for m in layers}
    model.to(device).train()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    try:
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            if chunk.shape[0] < 2 and start > 0:
                break  # a single-sample batch has no variance to add
            model(chunk.to(device))
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.eval()
    return n


def repair_batchnorm(
    model: torch.nn.Module,
    retain: SampleSet,
    *,
    mode: str,
    device: torch.device,
    batch_size: int,
    seed: int = 0,
) -> dict[str, object]:
    """Apply ``mode`` (auto | always | never); returns what was done, for the audit trail."""
    if mode not in BN_REPAIR_MODES:
        raise ValueError(f"bn repair must be one of {', '.join(BN_REPAIR_MODES)}, got {mode!r}")
    if not batchnorm_layers(model):
        return {}
    invalid = invalid_batchnorm(model)
    if mode == "never" or (mode == "auto" and not invalid):
        return {"bn_repair": mode, "bn_invalid_layers": len(invalid), "bn_reestimated_on": 0}
    used = reestimate_batchnorm(model, retain, device=device, batch_size=batch_size, seed=seed)
    return {"bn_repair": mode, "bn_invalid_layers": len(invalid), "bn_reestimated_on": used}
