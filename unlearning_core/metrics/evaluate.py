"""The full efficacy report of one candidate model, with DESIGN.md's metric names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from unlearning_core.data import Dataset
from unlearning_core.metrics.classification import accuracy, macro_f1, per_class_accuracy
from unlearning_core.metrics.distance import layer_distance
from unlearning_core.metrics.mia import mia_auc, mia_efficacy
from unlearning_core.metrics.outputs import Outputs, collect_outputs
from unlearning_core.metrics.relearn import relearn_steps
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
) -> dict[str, Any]:
    """Metrics of ``model`` after forgetting ``forget_positions`` of ``dataset.train``.

    The retain set is subsampled (seeded) to ``max_retain`` samples for speed; accuracy on
    it is then an unbiased estimate. ``relearn_steps`` is measured only when the original
    model's forget accuracy (the target) and an optimizer config are given.
    """
    forget, retain, test = split_outputs(
        model, dataset, forget_positions, device=device, max_retain=max_retain, seed=seed
    )
    metrics: dict[str, Any] = {
        "forget_acc": accuracy(forget),
        "retain_acc": accuracy(retain),
        "test_acc": accuracy(test),
        "per_class_acc": per_class_accuracy(test, dataset.num_classes),
        "macro_f1": macro_f1(test, dataset.num_classes),
        "mia_auc": mia_auc(forget, test),
        "mia_efficacy": mia_efficacy(retain, test, forget, seed=seed),
    }
    state = model.state_dict()
    if original_state is not None:
        metrics["layer_distance"] = layer_distance(state, original_state, retrained_state)
    if relearn is not None and original_forget_acc is not None:
        steps, reached = relearn_steps(
            model, dataset.train.subset(forget_positions), target_acc=original_forget_acc,
            optim=relearn, batch_size=relearn_batch_size, device=device,
            max_steps=relearn_max_steps, seed=seed,
        )
        metrics["relearn_steps"] = steps
        metrics["relearn_reached"] = reached
    return metrics
