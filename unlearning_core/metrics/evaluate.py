"""The full efficacy report of one candidate model, with DESIGN.md's metric names: the
registered metrics computed from one shared set of outputs."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unlearning_core.data import Dataset
from unlearning_core.metrics.outputs import Outputs, collect_outputs
from unlearning_core.metrics.registry import MetricContext, compute_metrics
from unlearning_core.training.loop import OptimConfig


def split_positions(n: int, forget_positions: np.ndarray) -> np.ndarray:
    """Retained positions: every training sample not in the forget set."""
    keep = np.ones(n, dtype=bool)
    keep[forget_positions] = False
    return np.flatnonzero(keep)


def split_outputs(
    model: torch.nn.Module,
    dataset: Dataset,
    forget_positions: np.ndarray,
    *,
    device: torch.device,
    max_retain: int | None,
    seed: int,
) -> tuple[Outputs, Outputs, Outputs]:
    """The model's outputs on the forget set, the retained set (a seeded subsample of at
    most ``max_retain``: an unbiased estimate, for speed) and the test set."""
    retain_pos = split_positions(len(dataset.train), forget_positions)
    if max_retain is not None and len(retain_pos) > max_retain:
        retain_pos = np.sort(np.random.default_rng(seed).choice(retain_pos, size=max_retain, replace=False))
    forget = collect_outputs(model, dataset.train.subset(forget_positions), device=device)
    retain = collect_outputs(model, dataset.train.subset(retain_pos), device=device)
    return forget, retain, collect_outputs(model, dataset.test, device=device)


def evaluate_unlearning(
    model: torch.nn.Module,
    dataset: Dataset,
    forget_positions: np.ndarray,
    *,
    device: torch.device,
    original_state: Mapping[str, torch.Tensor] | None = None,
    retrained_state: Mapping[str, torch.Tensor] | None = None,
    original_forget_acc: float | None = None,
    relearn: OptimConfig | None = None,
    relearn_batch_size: int = 64,
    relearn_max_steps: int = 100,
    max_retain: int | None = 10_000,
    seed: int = 0,
    shadow_models: Sequence[torch.nn.Module] | None = None,
    names: Collection[str] | None = None,
    expensive: bool = True,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` after forgetting ``forget_positions`` of ``dataset.train``: every
    registered metric (:mod:`unlearning_core.metrics.registry`) whose inputs are given.

    The retain set is subsampled (seeded) to ``max_retain`` samples for speed; accuracy on
    it is then an unbiased estimate. ``layer_distance`` needs ``original_state``;
    ``relearn_steps`` the original model's forget accuracy (the target) and an optimizer
    config; ``mia_auc_lira`` shadow models trained without the forget and test sets.
    ``names`` computes only those metrics, ``expensive=False`` skips the ones that train.
    """
    forget, retain, test = split_outputs(
        model, dataset, forget_positions, device=device, max_retain=max_retain, seed=seed
    )
    ctx = MetricContext(
        model=model, dataset=dataset, forget_positions=forget_positions, forget=forget,
        retain=retain, test=test, device=device, seed=seed, original_state=original_state,
        retrained_state=retrained_state, original_forget_acc=original_forget_acc, relearn=relearn,
        relearn_batch_size=relearn_batch_size, relearn_max_steps=relearn_max_steps,
        shadow_models=shadow_models, options=options or {},
    )
    return compute_metrics(ctx, names=names, expensive=expensive)
