"""Accuracy-type metrics: forget / retain / test accuracy, per-class accuracy, macro F1."""

from __future__ import annotations

from sklearn.metrics import f1_score

from unlearning_core.metrics.outputs import Outputs
from unlearning_core.metrics.registry import MetricContext, register_metric

#: The accuracies are fractions 0..1 and are compared with a retrained model everywhere.
_EVERYWHERE = ("version", "chart", "report", "compare", "gap")


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


# --- registered metrics (the functions above stay usable on any Outputs) ------------------


@register_metric("forget_acc", label="Forget accuracy", direction="retrain", show=_EVERYWHERE)
def forget_acc(ctx: MetricContext) -> float | None:
    """Accuracy on the forget set. Closer to the retrained model's is better: for whole
    classes that is about 0, for samples of kept classes about the test accuracy."""
    return accuracy(ctx.forget)


@register_metric("retain_acc", label="Retain accuracy", direction="higher", show=_EVERYWHERE)
def retain_acc(ctx: MetricContext) -> float | None:
    """Accuracy on (a seeded subsample of) the retained training samples."""
    return accuracy(ctx.retain)


@register_metric("test_acc", label="Test accuracy", direction="higher", show=_EVERYWHERE)
def test_acc(ctx: MetricContext) -> float | None:
    """Accuracy on the held-out test set."""
    return accuracy(ctx.test)


@register_metric("per_class_acc", label="Per-class test accuracy", direction="higher", kind="per_class")
def per_class_acc(ctx: MetricContext) -> dict[str, float | None]:
    """Test accuracy of each class (``None`` for a class absent from the test set)."""
    return per_class_accuracy(ctx.test, ctx.num_classes)


@register_metric("macro_f1", label="Macro F1 (test)", direction="higher", show=("version", "report"))
def macro_f1_test(ctx: MetricContext) -> float:
    """Macro-averaged F1 on the test set: a forgotten class drags it down visibly."""
    return macro_f1(ctx.test, ctx.num_classes)
