"""A metric added the way the registry's docstring says: one function plus its decorator.

``forget_confidence``: the mean top-class probability the model gives the forget samples.
A model that still remembers them is confident on them; after unlearning it is less so.

The decorator runs in :func:`register`, not at import: pytest imports every test module
before running any test, and a registration at import would leak into the other tests'
registry. Tests call :func:`register` in a fixture and undo it with
``unregister_metric(NAME)``.
"""

from __future__ import annotations

from unlearning_core.metrics import MetricContext, register_metric

NAME = "forget_confidence"
LABEL = "Forget confidence (toy)"


def forget_confidence(ctx: MetricContext) -> float | None:
    """Mean top-class softmax probability on the forget set (``None`` if it is empty)."""
    if len(ctx.forget) == 0:
        return None
    return float(ctx.forget.probabilities.max(dim=1).values.mean())


def register() -> None:
    """Register :func:`forget_confidence` on every table, its gap to retrain included."""
    register_metric(
        NAME,
        label=LABEL,
        direction="retrain",
        fmt=".4f",
        show=("version", "chart", "report", "compare", "gap"),
    )(forget_confidence)
