"""Accuracy-type metrics: forget / retain / test accuracy, per-class accuracy, macro F1."""

from __future__ import annotations

from sklearn.metrics import f1_score

from unlearning_core.metrics.outputs import Outputs


def accuracy(out: Outputs) -> float | None:
    """Share of correct predictions; ``None`` for an empty set (nothing to measure)."""
    if len(out) == 0:
        return None
    return float((out.predictions == out.labels).float().mean())


def per_class_accuracy(out: Outputs, num_classes: int) -> dict[str, float | None]:
    preds, labels = out.predictions, out.labels
    result: dict[str, float | None] = {}
    for k in range(num_classes):
        mask = labels == k
        result[str(k)] = float((preds[mask] == k).float().mean()) if bool(mask.any()) else None
    return result


def macro_f1(out: Outputs, num_classes: int) -> float:
    return float(
        f1_score(
            out.labels.numpy(), out.predictions.numpy(), labels=list(range(num_classes)),
            average="macro", zero_division=0,
        )
    )
